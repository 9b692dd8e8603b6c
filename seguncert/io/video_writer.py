"""Atomic video and image output (see :mod:`seguncert.io.atomic`): frames stream into a
temporary file beside the destination, renamed into place on success, so a crash or an error
never leaves a half-written video under the final name.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

from ..errors import DataError, SeguncertError
from .atomic import FILE_MODE, atomic_write_bytes, check_writable


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
        self.path.parent.mkdir(parents=True, exist_ok=True)
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
            raise DataError(
                f"cannot open a {codec} video writer for {self.path} at {ew}x{eh} pixels "
                "(the codec or OpenCV build may not support this size; use --size to shrink "
                "the frames, --panels for fewer panels, or an .avi output)"
            )
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
        os.chmod(self.tmp, FILE_MODE)
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
