"""CamVid-C on disk: corrupted copies of a CamVid-layout split, one folder per (corruption, severity).

``dest/<name>/<severity>/`` holds ``<split>/`` (corrupted images as PNG, named after the source
images) and ``<split>annot/`` (the source label files, hard-linked or copied byte for byte; with
``size`` set, labels resized nearest-neighbour and kept in their own encoding, ids or palette), so
CamVidDataset reads each folder like the clean split. Frame ``i`` of the split (in CamVidDataset's
order) is ``corrupt(image, name, severity, seed, index=i)``.

``manifest.json`` records the request. It is written with ``"complete": false`` before any frame
and rewritten ``true`` once every file is in place, so an interrupted run is resumed (outputs are
deterministic, files present are kept) and never mistaken for a finished one. A folder whose
manifest differs from the request, or that has files but no manifest, is refused with a DataError:
nothing is overwritten silently.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

import albumentations
import cv2
import numpy as np
from tqdm import tqdm

from ..errors import ConfigError, DataError
from .camvid import CamVidDataset, resize_nearest
from .corruptions import check_corruption, corrupt

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
INFO_KEYS = ("complete", "albumentations")  # recorded, but not part of the request


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write_png(path: Path, arr: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", arr)
    if not ok:
        raise DataError(f"cannot encode {path} as PNG")
    _atomic_write(path, buf.tobytes())


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` at ``dst`` (a copy where linking is refused), atomically."""
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex}.tmp")
    try:
        try:
            os.link(src, tmp)
        except OSError:  # other filesystem, or a read-only source we may not link
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        # rename() over a link to the same file does nothing and leaves tmp behind
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _check_args(names, severities, seed, size, limit) -> tuple[list[str], list[int], tuple | None]:
    names = [names] if isinstance(names, str) else list(dict.fromkeys(names))
    severities = list(dict.fromkeys(severities))
    if not names or not severities:
        raise ConfigError("write_corrupted_split needs at least one corruption name and severity")
    for name in names:
        for severity in severities:
            check_corruption(name, severity)
    if size is not None:
        if len(size) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in size):
            raise ConfigError(f"size must be (H, W) with positive integers, got {size!r}")
        size = (int(size[0]), int(size[1]))
    if limit is not None and (not isinstance(limit, (int, np.integer)) or limit < 1):
        raise ConfigError(f"limit must be a positive integer or None, got {limit!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"corruption seed must be an integer >= 0, got {seed!r}")
    return names, [int(s) for s in severities], size


def _describe(key: str, value) -> str:
    if key == "files" and isinstance(value, list):
        return f"{len(value)} frames starting {value[0]['image'] if value else None!r}"
    return repr(value)


def _folder_state(folder: Path, request: dict) -> str:
    """'reuse' (finished, same request), 'write' (new or resumable); DataError otherwise."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        if folder.exists() and any(folder.iterdir()):
            raise DataError(
                f"{folder} has files but no {MANIFEST}: not written by write_corrupted_split; "
                "refusing to overwrite it (remove it or choose another dest)"
            )
        return "write"
    try:
        old = json.loads(manifest.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {manifest}: {e}") from e
    for key, value in request.items():
        if old.get(key) != value:
            raise DataError(
                f"{folder} holds a different corrupted set: {MANIFEST} field {key!r} is "
                f"{_describe(key, old.get(key))}, requested {_describe(key, value)} "
                "(remove the folder or choose another dest)"
            )
    present = all(
        (folder / f["image"]).is_file() and (folder / f["label"]).is_file()
        for f in request["files"]
    )
    return "reuse" if old.get("complete") and present else "write"


def _write_manifest(folder: Path, request: dict, complete: bool) -> None:
    info = {"complete": complete, "albumentations": albumentations.__version__}
    _atomic_write(folder / MANIFEST, (json.dumps({**request, **info}, indent=1) + "\n").encode())


def _frame_files(pairs: Sequence[tuple[Path, Path]], split: str, resized: bool) -> list[dict]:
    """Output paths relative to a folder: images always PNG; labels keep their file name unless
    resized (then re-encoded as PNG)."""
    return [
        {
            "image": f"{split}/{image.stem}.png",
            "label": f"{split}annot/{label.stem + '.png' if resized else label.name}",
        }
        for image, label in pairs
    ]


def _resized_label(path: Path, size: tuple[int, int]) -> np.ndarray:
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise DataError(f"cannot read label {path}")
    return resize_nearest(raw, size)  # raw encoding (ids or BGR palette) survives nearest


def _write_frames(dataset, files, pending, seed, size, progress) -> None:
    """Corrupt and write every frame missing from a pending folder (files present are kept)."""
    total = len(files) * len(pending)
    with tqdm(total=total, desc="CamVid-C", unit="img", disable=not progress or not total) as bar:
        for i, out in enumerate(files):
            todo = [
                p
                for p in pending
                if not ((p[0] / out["image"]).is_file() and (p[0] / out["label"]).is_file())
            ]
            bar.update(len(pending) - len(todo))
            if not todo:
                continue
            label_path = dataset.pairs[i][1]
            image = dataset.raw(i)["image"]  # resized; checks the label's size and values
            label = _resized_label(label_path, size) if size else None
            for folder, name, severity, _ in todo:
                if not (folder / out["image"]).is_file():
                    bad = corrupt(image, name, severity, seed, index=i)
                    _write_png(folder / out["image"], cv2.cvtColor(bad, cv2.COLOR_RGB2BGR))
                if not (folder / out["label"]).is_file():
                    if label is None:
                        _link_or_copy(label_path, folder / out["label"])
                    else:
                        _write_png(folder / out["label"], label)
                bar.update(1)


def write_corrupted_split(
    root,
    split: str,
    dest,
    names: Iterable[str],
    severities: Iterable[int],
    seed: int = 0,
    size: tuple[int, int] | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> list[Path]:
    """Write (or reuse) ``dest/<name>/<severity>/`` for every name x severity; see module doc.

    Args:
        root: CamVid-layout folder with ``<split>/`` and ``<split>annot/``.
        size: (H, W) to resize image (area when shrinking) and labels (nearest) before
            corrupting, i.e. the size the model sees; None keeps the native size.
        limit: take only the first ``limit`` frames of the split.
    Returns:
        The folders, in ``names`` x ``severities`` order, whether written or reused.
    """
    names, severities, size = _check_args(names, severities, seed, size, limit)
    dataset = CamVidDataset(root, split, size=size, cache=False)
    pairs = dataset.pairs[:limit]
    files = _frame_files(pairs, split, resized=size is not None)
    base = {
        "format_version": FORMAT_VERSION,
        "seed": int(seed),
        "split": split,
        "size": list(size) if size else None,
        "source_root": str(Path(root).resolve()),
        "files": files,
    }
    dest = Path(dest)
    folders, pending = [], []
    for name in names:
        for severity in severities:
            folder = dest / name / str(severity)
            request = {"name": name, "severity": severity, **base}
            folders.append(folder)
            if _folder_state(folder, request) == "write":
                pending.append((folder, name, severity, request))
    for folder, _, _, request in pending:
        for sub in (split, f"{split}annot"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        _write_manifest(folder, request, complete=False)
    _write_frames(dataset, files, pending, seed, size, progress)
    for folder, _, _, request in pending:
        _write_manifest(folder, request, complete=True)
    return folders
