"""Tensor files: flat ``{name: tensor}`` dicts in safetensors (nothing executable), hashed.

Checkpoint and resume-state tensors are *content-named*: ``<stem>.<first 12 hex digits of the
SHA-256>.safetensors``. A new file never replaces the one a sidecar currently points at, so the
sidecar, written last, is the single commit point of a checkpoint (see
:mod:`seguncert.io.checkpoint`).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError, one_line
from .atomic import atomic_write

HASH_CHARS = 12
CONTENT_NAME = re.compile(rf"^(?P<stem>.+)\.[0-9a-f]{{{HASH_CHARS}}}\.safetensors$")


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path) -> Path:
    """Atomically write a flat ``{name: tensor}`` dict as safetensors (copies to contiguous CPU)."""
    flat = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(flat, str(tmp)), suffix=".safetensors")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_content_named(
    tensors: dict[str, torch.Tensor], folder: Path, stem: str
) -> tuple[Path, str]:
    """Write ``tensors`` as ``folder/<stem>.<sha12>.safetensors``; returns (path, full SHA-256).

    The file is complete under a pending name before it gets its final one, so a file under a
    content name is always whole; writing identical tensors again yields the same name."""
    pending = save_tensors(tensors, folder / f".{stem}.pending.safetensors")
    digest = sha256_file(pending)
    final = folder / f"{stem}.{digest[:HASH_CHARS]}.safetensors"
    os.replace(pending, final)
    return final, digest


def load_verified_weights(path: Path, expected_sha256: str | None) -> dict[str, torch.Tensor]:
    """Read a tensor file after checking its SHA-256; CheckpointError naming it otherwise."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint weights not found: {path}")
    if sha256_file(path) != expected_sha256:
        raise CheckpointError(
            f"{path} does not match the SHA-256 in its sidecar (truncated or modified file)"
        )
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({one_line(e)})"
        ) from None
