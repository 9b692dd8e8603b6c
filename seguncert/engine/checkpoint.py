"""Checkpoints without pickle: weights in safetensors, everything else in a JSON sidecar.

A checkpoint named ``best`` in a run folder is two files:

- ``best.safetensors``: the model's ``state_dict`` (plain tensors, nothing executable);
- ``best.json``: the sidecar (format version, task, ``model_spec`` that rebuilds the network,
  dataset meta with class names / palette / normalisation, resolved config, metrics, fitted
  temperature, code version, epoch, and the SHA-256 of the weights file).

Every file is written atomically (temporary file in the same folder, fsync, ``os.replace``), and
the sidecar is written last: a crash at any moment leaves either the previous checkpoint or the
new one, never a sidecar that points at a partial weights file. Loading checks the format, the
weights' SHA-256 and that every key and shape matches the rebuilt model, so a truncated or
tampered file is a one-line :class:`CheckpointError` naming it. Resume state (optimiser, RNG...)
lives in :mod:`seguncert.engine.resume`.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

import seguncert
from seguncert.errors import CheckpointError, SeguncertError, one_line

FORMAT = "seguncert-checkpoint/1"
# Fields callers may not change through update_sidecar (they tie the sidecar to its weights).
_FROZEN_FIELDS = ("format", "weights_file", "weights_sha256", "model_spec")


# ---------------------------------------------------------------- atomic file writes


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, fsync it, then rename it
    over ``path``. On any exception the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        # mkstemp creates 0600; give the final file the usual permissions (0666 minus umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    # fsync the folder so the rename itself survives a power cut (not possible on every OS).
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return path
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=True) + "\n")


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path) -> Path:
    """Atomically write a flat ``{name: tensor}`` dict as safetensors (copies to contiguous CPU)."""
    flat = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(flat, str(tmp)))


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------- saving


def code_version() -> dict:
    """Package version plus the git commit of the checkout when there is one."""
    commit = None
    repo = Path(__file__).resolve().parents[2]
    if (repo / ".git").exists():
        try:
            out = subprocess.run(
                ["git", "-C", str(repo), "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                timeout=5,
            )
            commit = (out.stdout.strip() or None) if out.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            commit = None
    return {"seguncert": seguncert.__version__, "git_commit": commit, "torch": torch.__version__}


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DistributedDataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def save_checkpoint(
    run_dir: str | Path,
    name: str,
    model: nn.Module,
    *,
    meta,
    config,
    metrics: dict | None = None,
    epoch: int | None = None,
    temperature: float | None = None,
) -> Path:
    """Write ``run_dir/name.safetensors`` then ``run_dir/name.json``; return the sidecar path.

    ``meta`` is a DatasetMeta (or its dict), ``config`` a Config (or its dict).
    """
    run_dir = Path(run_dir)
    model = unwrap(model)
    weights = run_dir / f"{name}.safetensors"
    save_tensors(model.state_dict(), weights)
    meta_d = meta.to_dict() if hasattr(meta, "to_dict") else dict(meta)
    config_d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    sidecar = {
        "format": FORMAT,
        "kind": meta_d.get("task", model.spec.get("task")),
        "model_spec": model.spec,
        "meta": meta_d,
        "class_names": meta_d.get("class_names"),
        "palette": meta_d.get("palette"),
        "config": config_d,
        "metrics": metrics or {},
        "temperature": temperature,
        "epoch": epoch,
        "code_version": code_version(),
        "weights_file": weights.name,
        "weights_sha256": sha256_file(weights),
    }
    return atomic_write_json(run_dir / f"{name}.json", sidecar)


# ---------------------------------------------------------------- loading


def resolve_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """(sidecar, weights) for a run folder (best, else last), a .json or a .safetensors path."""
    path = Path(path)
    if path.is_dir():
        for stem in ("best", "last"):
            if (path / f"{stem}.json").is_file():
                path = path / f"{stem}.json"
                break
        else:
            raise CheckpointError(f"no checkpoint in {path} (expected best.json or last.json)")
    if path.suffix == ".safetensors":
        sidecar = path.with_suffix(".json")
    elif path.suffix == ".json":
        sidecar = path
    else:
        raise CheckpointError(
            f"{path} is not a checkpoint (expected a folder, .json or .safetensors)"
        )
    if not sidecar.is_file():
        raise CheckpointError(f"checkpoint sidecar not found: {sidecar}")
    info = read_sidecar(sidecar)
    return sidecar, sidecar.parent / info["weights_file"]


def read_sidecar(path: str | Path) -> dict:
    """Parse and check a sidecar; CheckpointError naming the file when it is not one of ours."""
    path = Path(path)
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint sidecar not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(
            f"{path} is not a readable checkpoint sidecar ({one_line(e)})"
        ) from None
    if not isinstance(info, dict) or "format" not in info:
        raise CheckpointError(f"{path} is not a seguncert checkpoint sidecar (no 'format' field)")
    if info["format"] != FORMAT:
        raise CheckpointError(
            f"{path} has checkpoint format {info['format']!r}; this version reads {FORMAT!r}"
        )
    missing = [k for k in ("model_spec", "meta", "weights_file", "weights_sha256") if k not in info]
    if missing:
        raise CheckpointError(f"{path} lacks the sidecar field(s) {', '.join(missing)}")
    if Path(info["weights_file"]).name != info["weights_file"]:
        raise CheckpointError(f"{path}: weights_file must be a file name beside the sidecar")
    return info


def load_checkpoint(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    builder: Callable[[dict], nn.Module] | None = None,
) -> tuple[nn.Module, dict]:
    """Rebuild the model from the sidecar's spec and load verified weights; returns
    ``(model in eval mode on map_location, sidecar dict)``. The dict also carries
    ``sidecar_path`` and ``weights_path``. ``builder`` defaults to ``model_from_spec``."""
    sidecar, weights = resolve_checkpoint(path)
    info = read_sidecar(sidecar)
    state = load_verified_weights(weights, info["weights_sha256"])
    if builder is None:
        from seguncert.models.build import model_from_spec as builder
    try:
        model = builder(info["model_spec"])
    except (KeyError, TypeError, ValueError, SeguncertError) as e:
        raise CheckpointError(f"{sidecar}: cannot rebuild the model ({one_line(e)})") from None
    check_state_matches(model, state, weights)
    model.load_state_dict(state, strict=True)
    model.to(map_location).eval()
    info = dict(info, sidecar_path=str(sidecar), weights_path=str(weights))
    return model, info


def load_verified_weights(weights: Path, expected_sha256: str) -> dict[str, torch.Tensor]:
    if not weights.is_file():
        raise CheckpointError(f"checkpoint weights not found: {weights}")
    if sha256_file(weights) != expected_sha256:
        raise CheckpointError(
            f"{weights} does not match the SHA-256 in its sidecar (truncated or modified file)"
        )
    try:
        return load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{weights} is not a readable safetensors file ({one_line(e)})"
        ) from None


def check_state_matches(model: nn.Module, state: dict[str, torch.Tensor], where: Path) -> None:
    """Every key present on both sides, with the same shape; else a one-line CheckpointError."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s) e.g. {missing[0]}")
        if extra:
            parts.append(f"unexpected {len(extra)} key(s) e.g. {extra[0]}")
        raise CheckpointError(f"{where} does not fit the model in its sidecar: {'; '.join(parts)}")
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"{where}: tensor {k} has shape {tuple(state[k].shape)}, model expects "
                f"{tuple(v.shape)}"
            )


def update_sidecar(path: str | Path, **fields) -> Path:
    """Atomically set top-level sidecar fields (e.g. ``temperature=1.7``); returns the sidecar.

    The weights file is not touched; the fields that bind the sidecar to it cannot be changed.
    """
    sidecar, _ = resolve_checkpoint(path)
    frozen = [k for k in fields if k in _FROZEN_FIELDS]
    if frozen:
        raise CheckpointError(f"update_sidecar cannot change {', '.join(frozen)} in {sidecar}")
    info = read_sidecar(sidecar)
    info.update(fields)
    return atomic_write_json(sidecar, info)
