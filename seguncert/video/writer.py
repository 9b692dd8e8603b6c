"""Atomic output: videos, images and bytes written to a temporary file beside the destination
and renamed into place on success, so a crash or an error never leaves a half-written file
under the final name.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

from ..errors import DataError, SeguncertError

_UMASK = os.umask(0o022)  # read the umask (only settable), then restore it
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK  # what open() would give; mkstemp's files are 0600


def check_writable(path: str | Path) -> Path:
    """Raise DataError unless a file can be created at ``path`` (its folder is made if needed).

    Tries to create a temporary file in the folder, which catches read-only places such as
    /proc and paths under an existing file."""
    p = Path(path)
    if p.is_dir():
        raise DataError(f"output path is a folder, expected a file: {p}")
    for parent in p.parents:  # a path "under" an existing file can never be created
        if parent.exists():
            if not parent.is_dir():
                raise DataError(f"cannot write output {p}: {parent} is a file, not a folder")
            break
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".check", dir=p.parent)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise DataError(f"cannot write output {p}: {e.strerror or e}") from None
    return p


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it into place."""
    p = check_writable(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_image(path: str | Path, rgb: np.ndarray) -> None:
    """Atomically write an RGB uint8 image (format from the extension: .png, .jpg, ...)."""
    ext = Path(path).suffix.lower() or ".png"
    ok, buf = cv2.imencode(ext, cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise DataError(f"cannot encode image as {ext}: {path}")
    atomic_write_bytes(path, buf.tobytes())


class AtomicVideoWriter:
    """Write RGB uint8 frames of ``size`` = (H, W) to ``path``; the file appears on ``close()``.

    Frames go to a hidden temporary file in the destination folder (same filesystem, so the
    final ``os.replace`` is atomic). Leaving the ``with`` block on an exception, or calling
    ``abort()``, deletes the temporary file. Codec: "mp4v" by default, MJPG for ``.avi`` paths
    (or any four-character code given). Odd sizes are padded to even with black because most
    encoders silently crop odd widths/heights.
    """

    def __init__(
        self, path: str | Path, fps: float, size: tuple[int, int], codec: str | None = None
    ):
        self.path = check_writable(path)
        if codec is None:
            codec = "MJPG" if self.path.suffix.lower() == ".avi" else "mp4v"
        if len(codec) != 4:
            raise SeguncertError(f"video codec must be a four-character code, got {codec!r}")
        self.size = (int(size[0]), int(size[1]))
        self.enc_size = (self.size[0] + self.size[0] % 2, self.size[1] + self.size[1] % 2)
        suffix = self.path.suffix or ".mp4"  # OpenCV picks the container from the extension
        fd, self.tmp = tempfile.mkstemp(
            prefix=f".{self.path.stem}.", suffix=f".part{suffix}", dir=self.path.parent
        )
        os.close(fd)
        eh, ew = self.enc_size
        self._writer = cv2.VideoWriter(
            self.tmp, cv2.VideoWriter_fourcc(*codec), float(fps), (ew, eh)
        )
        if not self._writer.isOpened():
            self.abort()
            raise DataError(f"cannot open video writer ({codec}) for {self.path}")
        self.frames = 0

    def write(self, rgb: np.ndarray) -> None:
        if self._writer is None:
            raise SeguncertError(f"video writer for {self.path} is closed")
        if rgb.shape[:2] != self.size:
            raise ValueError(f"frame size {rgb.shape[:2]} != writer size {self.size}")
        bgr = cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.uint8), cv2.COLOR_RGB2BGR)
        (h, w), (eh, ew) = self.size, self.enc_size
        if (eh, ew) != (h, w):
            bgr = np.pad(bgr, ((0, eh - h), (0, ew - w), (0, 0)))
        self._writer.write(bgr)
        self.frames += 1

    def close(self) -> Path:
        """Finish the file and move it to its final name; a video with no frames is an error."""
        if self._writer is None:
            return self.path
        self._writer.release()
        self._writer = None
        if self.frames == 0:
            self.abort()
            raise DataError(f"no frames were written to {self.path}")
        os.chmod(self.tmp, _FILE_MODE)
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        if getattr(self, "_writer", None) is not None:
            self._writer.release()
            self._writer = None
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)

    def __enter__(self) -> AtomicVideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()
