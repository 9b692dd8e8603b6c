"""Resume state without pickle: tensors in safetensors, structure and numbers in JSON.

:func:`write_resume_state` takes any nested structure of dicts (any scalar keys), lists,
tuples, numbers, strings, None and tensors (optimiser / scheduler / GradScaler ``state_dict``s,
RNG states...). Each tensor goes into ``<name>.state.<sha12>.safetensors`` under a generated key
and is replaced in the JSON by ``{"__tensor__": key}``; tuples and dicts with non-string keys (the
optimiser's ``state`` is keyed by int) get tagged encodings so they come back exactly.

Both files are content-named and new ones never replace old ones: the checkpoint sidecar that
records them (``resume_state`` in ``last.json``, see :mod:`seguncert.io.checkpoint`) is written
after them and is the one commit point, so the weights and the optimiser state that resume pairs
always come from the same save. A crash at any moment leaves the previous pair or the new one.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError, one_line
from .atomic import atomic_write_text
from .tensorfile import HASH_CHARS, load_verified_weights, save_content_named

STATE_FORMAT = "seguncert-resume/2"


def _encode(obj, tensors: dict[str, torch.Tensor]):
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors) for k, v in obj.items()}
        return {"__dict__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in resume state")


def _decode(obj, tensors: dict[str, torch.Tensor]):
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__dict__" in obj:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__dict__"]}
    if "__ndarray__" in obj:
        return np.asarray(obj["__ndarray__"], dtype=obj["dtype"])
    return {k: _decode(v, tensors) for k, v in obj.items()}


def write_resume_state(run_dir: str | Path, name: str, state: dict) -> dict:
    """Write ``<name>.state.<sha12>.safetensors`` and ``.json``; returns the sidecar entry
    ``{"file": json name, "sha256": of the JSON}`` that commits them."""
    run_dir = Path(run_dir)
    tensors: dict[str, torch.Tensor] = {}
    body = _encode(state, tensors)
    weights, digest = save_content_named(tensors, run_dir, f"{name}.state")
    doc = {"format": STATE_FORMAT, "tensors_file": weights.name, "tensors_sha256": digest}
    text = json.dumps({**doc, "state": body}) + "\n"
    path = run_dir / f"{name}.state.{digest[:HASH_CHARS]}.json"
    atomic_write_text(path, text)
    return {"file": path.name, "sha256": hashlib.sha256(text.encode()).hexdigest()}


def read_resume_state(run_dir: str | Path, entry: dict | None) -> dict:
    """Inverse of :func:`write_resume_state` for the sidecar entry ``entry``; CheckpointError
    naming the file on any problem."""
    run_dir = Path(run_dir)
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
        raise CheckpointError(f"nothing to resume in {run_dir}: last.json records no resume state")
    path = run_dir / Path(entry["file"]).name
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read resume state {path} ({one_line(e)})") from None
    if hashlib.sha256(raw).hexdigest() != entry.get("sha256"):
        raise CheckpointError(f"{path} does not match the SHA-256 recorded in last.json")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not a readable resume state ({one_line(e)})") from None
    if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not a {STATE_FORMAT} resume state")
    tensors_file = run_dir / Path(str(doc.get("tensors_file"))).name
    tensors = load_verified_weights(tensors_file, doc.get("tensors_sha256"))
    try:
        return _decode(doc["state"], tensors)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path} has a malformed state ({one_line(e)})") from None
