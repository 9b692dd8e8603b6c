"""Atomic file output: every file the package writes goes through :func:`atomic_write`.

A temporary file is created beside the destination (same folder, so the same filesystem),
written, fsynced and renamed over the destination with ``os.replace``; on any exception the
temporary file is removed and the destination is untouched. So a crash, a full disk or an
interrupted run never leaves a half-written file under a final name. :func:`check_writable`
lets a tool test an output location up front, before any expensive work.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..errors import DataError

_UMASK = os.umask(0o022)  # read the umask (it can only be read by setting it), then restore it
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK  # what open() would give; mkstemp's files are 0600


def check_writable(path: str | Path) -> Path:
    """Raise DataError unless a file can be created at ``path`` (its folder is made if needed).

    Creates and removes a temporary file in the folder, which catches read-only places and
    paths under an existing regular file."""
    p = Path(path)
    if p.is_dir():
        raise DataError(f"output path is a folder, expected a file: {p}")
    check_folder_writable(p.parent, what=f"output {p}")
    return p


def check_folder_writable(folder: str | Path, what: str | None = None) -> Path:
    """Raise DataError unless files can be created in ``folder``: it exists and accepts a
    temporary file, or its nearest existing parent is a writable folder (nothing is created)."""
    d = Path(folder)
    what = what or f"output folder {d}"
    for parent in (d, *d.parents):  # a path "under" an existing file can never be created
        if parent.exists():
            if not parent.is_dir():
                raise DataError(f"cannot write {what}: {parent} is a file, not a folder")
            break
    if not d.exists():
        if not os.access(parent, os.W_OK | os.X_OK):
            raise DataError(f"cannot write {what}: {parent} is not writable")
        return d
    try:
        fd, tmp = tempfile.mkstemp(prefix=".seguncert.", suffix=".check", dir=d)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise DataError(f"cannot write {what}: {e.strerror or e}") from None
    return d


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (not possible on every OS or filesystem)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], None], suffix: str = ".tmp") -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, fsync it, rename it over
    ``path``. ``suffix`` ends the temporary name (writers that pick a format from the extension,
    such as OpenCV's video writer, need the real one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, FILE_MODE)
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=True) + "\n")
