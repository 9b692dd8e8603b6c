"""Resume state without pickle: tensors in safetensors, structure and numbers in JSON.

``save_resume_state(run_dir, state)`` takes any nested structure of dicts (any scalar keys),
lists, tuples, numbers, strings, None and tensors (optimiser / scheduler / GradScaler
``state_dict``s, RNG states...). Each tensor goes into ``last.state.safetensors`` under a
generated key and is replaced in the JSON by ``{"__tensor__": key}``; tuples and dicts with
non-string keys (the optimiser's ``state`` is keyed by int) get tagged encodings so they come
back exactly. The JSON is written after the tensors, each atomically, so a crash leaves the
previous pair or the new one; the JSON records the tensors file's SHA-256 to detect a mismatch.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from seguncert.engine.checkpoint import (
    atomic_write_json,
    load_verified_weights,
    save_tensors,
    sha256_file,
)
from seguncert.errors import CheckpointError, one_line

STATE_FORMAT = "seguncert-resume/1"


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


def save_resume_state(run_dir: str | Path, state: dict, name: str = "last.state") -> Path:
    """Write ``name.safetensors`` then ``name.json`` atomically; returns the JSON path."""
    run_dir = Path(run_dir)
    tensors: dict[str, torch.Tensor] = {}
    body = _encode(state, tensors)
    weights = run_dir / f"{name}.safetensors"
    save_tensors(tensors, weights)
    doc = {"format": STATE_FORMAT, "tensors_sha256": sha256_file(weights), "state": body}
    return atomic_write_json(run_dir / f"{name}.json", doc)


def load_resume_state(run_dir: str | Path, name: str = "last.state") -> dict:
    """Inverse of :func:`save_resume_state`; CheckpointError naming the file on any problem."""
    path = Path(run_dir) / f"{name}.json"
    if not path.is_file():
        raise CheckpointError(f"nothing to resume: {path} not found")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not a readable resume state ({one_line(e)})") from None
    if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not a {STATE_FORMAT} resume state")
    tensors = load_verified_weights(path.with_suffix(".safetensors"), doc.get("tensors_sha256"))
    try:
        return _decode(doc["state"], tensors)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path} has a malformed state ({one_line(e)})") from None


# ---------------------------------------------------------------- random number generators


def capture_rng_state() -> dict:
    """Every global RNG a training step may draw from, in a JSON/safetensors-storable form."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], np_state[1].tolist(), *[_py(v) for v in np_state[2:]]],
        "python": _listify(random.getstate()),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if state.get("cuda") and torch.cuda.is_available():
        # A run resumed on fewer GPUs restores the devices it has.
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)


def _py(v):
    return v.item() if isinstance(v, np.generic) else v


def _listify(v):
    return [_listify(x) for x in v] if isinstance(v, (tuple, list)) else v
