"""Checkpoints without pickle: weights in safetensors, everything else in a JSON sidecar.

A checkpoint named ``best`` in a run folder is:

- ``best.<sha12>.safetensors``: the model's ``state_dict`` (plain tensors, nothing executable),
  named by the first 12 hex digits of its SHA-256;
- ``best.json``: the sidecar (format version, task, ``model_spec`` that rebuilds the network,
  dataset meta with class names / palette / normalisation, resolved config, metrics, the fitted
  calibration, code version, epoch, the weights file's name and SHA-256, and for ``last`` the
  resume state's file, see :mod:`seguncert.io.resume`).

The sidecar is the commit point. Tensor files are written completely under new names first and
never replace a file that a sidecar points at; then the sidecar is replaced atomically
(temporary file, fsync, ``os.replace``), and only then are files it no longer names removed. A
crash at any moment therefore leaves the previous checkpoint or the new one, whole, with its own
weights and resume state. Loading checks the format, the weights' SHA-256 and that every key and
shape matches the rebuilt model, so a truncated or tampered file is a one-line
:class:`CheckpointError` naming it.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import seguncert
from seguncert.errors import CheckpointError, SeguncertError, one_line
from seguncert.io.atomic import atomic_write_json
from seguncert.io.resume import write_resume_state
from seguncert.io.tensorfile import CONTENT_NAME, load_verified_weights, save_content_named

FORMAT = "seguncert-checkpoint/1"
# Fields callers may not change through update_sidecar (they tie the sidecar to its files).
_FROZEN_FIELDS = ("format", "weights_file", "weights_sha256", "model_spec", "resume_state")


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
    calibration: dict | None = None,
    resume_state: dict | None = None,
) -> Path:
    """Write checkpoint ``name`` into ``run_dir`` (see the module docstring); returns the sidecar.

    ``meta`` is a DatasetMeta (or its dict), ``config`` a Config (or its dict), ``calibration``
    a calibrator's ``to_dict()``; ``resume_state`` (optimiser, scheduler, RNG...) is stored with
    the weights as one unit, so ``--resume`` can never pair weights and state of two epochs."""
    run_dir = Path(run_dir)
    model = unwrap(model)
    spec = getattr(model, "spec", None)
    if not isinstance(spec, dict):
        raise CheckpointError(
            f"cannot save {type(model).__name__}: it has no .spec to rebuild it from "
            "(build it with seguncert.models.build_model or a seguncert model class)"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    entry = write_resume_state(run_dir, name, resume_state) if resume_state is not None else None
    weights, digest = save_content_named(model.state_dict(), run_dir, name)
    meta_d = meta.to_dict() if hasattr(meta, "to_dict") else dict(meta)
    config_d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    sidecar = {
        "format": FORMAT,
        "kind": meta_d.get("task", spec.get("task")),
        "model_spec": spec,
        "meta": meta_d,
        "class_names": meta_d.get("class_names"),
        "palette": meta_d.get("palette"),
        "config": config_d,
        "metrics": metrics or {},
        "calibration": calibration,
        "epoch": epoch,
        "code_version": code_version(),
        "weights_file": weights.name,
        "weights_sha256": digest,
        "resume_state": entry,
    }
    path = atomic_write_json(run_dir / f"{name}.json", sidecar)
    _remove_unreferenced(run_dir, name, sidecar)
    return path


def _remove_unreferenced(run_dir: Path, name: str, sidecar: dict) -> None:
    """Delete this checkpoint's tensor / state files that the new sidecar no longer names."""
    keep = {sidecar["weights_file"]}
    if sidecar.get("resume_state"):
        state_json = sidecar["resume_state"]["file"]
        keep |= {state_json, state_json.removesuffix(".json") + ".safetensors"}
    legacy = {f"{name}.safetensors", f"{name}.state.json", f"{name}.state.safetensors"}
    for p in run_dir.iterdir():
        content = CONTENT_NAME.match(p.name.replace(".json", ".safetensors"))
        ours = content is not None and content["stem"] in (name, f"{name}.state")
        if p.name not in keep and (ours or p.name in legacy):
            p.unlink(missing_ok=True)


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
        named = CONTENT_NAME.match(path.name)
        sidecar = path.with_name(f"{named['stem']}.json") if named else path.with_suffix(".json")
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


def ensemble_members(path: str | Path) -> list[Path]:
    """The member run folders of an ensemble folder (``member_0``, ``member_1``, ... as
    ``seguncert-train --members`` writes them), or ``[path]`` for a single checkpoint."""
    path = Path(path)
    if path.is_dir() and not any((path / f"{s}.json").is_file() for s in ("best", "last")):
        members = sorted(
            (p for p in path.glob("member_*") if p.is_dir()),
            key=lambda p: int(p.name.split("_")[1]) if p.name.split("_")[1].isdigit() else 0,
        )
        if members:
            return members
    return [path]


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
    """Atomically set top-level sidecar fields (e.g. ``calibration={...}``); returns the sidecar.

    The weights file is not touched; the fields that bind the sidecar to it cannot be changed.
    """
    sidecar, _ = resolve_checkpoint(path)
    frozen = [k for k in fields if k in _FROZEN_FIELDS]
    if frozen:
        raise CheckpointError(f"update_sidecar cannot change {', '.join(frozen)} in {sidecar}")
    info = read_sidecar(sidecar)
    info.update(fields)
    return atomic_write_json(sidecar, info)
