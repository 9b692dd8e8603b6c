"""Video and frame-sequence I/O: input discovery, a threaded frame reader, an atomic writer.

A *source* is one video file, one folder of frames, one image, or the images matched by a
glob. :class:`FrameReader` decodes a source in a background thread (a bounded queue, so decoding
overlaps inference without reading a whole video into memory). :class:`AtomicVideoWriter`
writes to a temporary file beside the destination and renames it on ``close()``, so a crash or
error never leaves a half-written video under the final name.
"""

from __future__ import annotations

import glob as globlib
import os
import queue
import re
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# FFmpeg inside OpenCV prints decoder complaints ("moov atom not found") straight to stderr;
# quiet them so a bad file gives our one-line error only. Must be set before cv2 loads FFmpeg.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from .errors import DataError, SeguncertError  # noqa: E402

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
DEFAULT_FPS = 10.0  # frame rate given to frame folders and images


_UMASK = os.umask(0o022)  # read the umask (only settable), then restore it
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK  # what open() would give; mkstemp's files are 0600


def natural_key(s: str) -> list:
    """Sort key that orders embedded numbers numerically: frame2 < frame10."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(s))]


def is_image(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTS


@dataclass
class Source:
    """One input stream. kind: "video" (paths = [file]) or "frames" (paths = image files)."""

    kind: str
    paths: list[str]
    name: str  # stem used to name outputs
    origin: str = ""  # what the user typed (for messages)


def _frames_source(files: list[str], name: str, origin: str) -> Source:
    return Source("frames", sorted(files, key=natural_key), name, origin)


def iter_inputs(paths: list[str]) -> list[Source]:
    """Resolve user paths into sources, in the order given.

    A path is a video file (anything OpenCV reads), a folder of frames (natural order), a single
    image, or a glob pattern: the images it matches form one frame sequence, each video it
    matches is its own source. Missing paths or empty matches raise :class:`DataError`.
    """
    sources: list[Source] = []
    for raw in paths:
        p = Path(raw)
        if globlib.has_magic(raw) and not p.exists():
            matches = sorted(globlib.glob(raw), key=natural_key)
            files = [m for m in matches if os.path.isfile(m)]
            if not files:
                raise DataError(f"input pattern matched no files: {raw}")
            images = [m for m in files if is_image(m)]
            if images:
                name = Path(images[0]).parent.name or "frames"
                sources.append(_frames_source(images, name, raw))
            sources += [Source("video", [m], Path(m).stem, m) for m in files if not is_image(m)]
        elif p.is_dir():
            images = [str(f) for f in p.iterdir() if f.is_file() and is_image(f)]
            if not images:
                raise DataError(f"input folder has no image frames: {p}")
            sources.append(_frames_source(images, p.resolve().name, raw))
        elif p.is_file():
            if is_image(p):
                sources.append(Source("frames", [str(p)], p.stem, raw))
            else:
                sources.append(Source("video", [str(p)], p.stem, raw))
        else:
            raise DataError(f"input not found: {raw}")
    # Distinct output names: a second "clip" becomes "clip_2".
    seen: dict[str, int] = {}
    for s in sources:
        n = seen.get(s.name, 0) + 1
        seen[s.name] = n
        if n > 1:
            s.name = f"{s.name}_{n}"
    return sources


def _read_image(path: str) -> np.ndarray:
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise DataError(f"cannot read image: {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _open_video(path: str) -> cv2.VideoCapture:
    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        raise DataError(f"cannot read video (not a format OpenCV decodes, or empty): {path}")
    return cap


def _resize(rgb: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    if size is None or rgb.shape[:2] == tuple(size):
        return rgb
    h, w = size
    interp = cv2.INTER_AREA if h * w < rgb.shape[0] * rgb.shape[1] else cv2.INTER_LINEAR
    return cv2.resize(rgb, (w, h), interpolation=interp)


_END = object()


class FrameReader:
    """Decode a source in a background thread; iterate to get ``(index, rgb uint8 (H, W, 3))``.

    ``size`` (H, W) resizes every frame; without it, frames of a folder are resized to the first
    frame's size (a video needs one size). ``fps``: the video's own rate, else ``fps`` or 10.
    ``frame_count`` is the number of frames when known up front (None otherwise). Opening checks
    that the first frame decodes, so a zero-frame or corrupt input fails here, not mid-run.
    """

    def __init__(
        self,
        source: Source | str,
        size: tuple[int, int] | None = None,
        fps: float | None = None,
        queue_size: int = 8,
    ):
        if isinstance(source, str):
            source = iter_inputs([source])[0]
        self.source = source
        self.size = tuple(size) if size is not None else None
        self.queue_size = queue_size
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._queue: queue.Queue | None = None
        if source.kind == "video":
            path = source.paths[0]
            cap = _open_video(path)
            vfps = cap.get(cv2.CAP_PROP_FPS)
            self.fps = float(fps or (vfps if vfps and 0 < vfps < 1000 else DEFAULT_FPS))
            n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            ok, bgr = cap.read()
            cap.release()
            if not ok or bgr is None:
                raise DataError(f"video has no frames: {path}")
            first = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            self.frame_count = n if n > 0 else None
        else:
            self.fps = float(fps or DEFAULT_FPS)
            first = _read_image(source.paths[0])
            self.frame_count = len(source.paths)
        self.native_size = first.shape[:2]
        self.out_size = self.size or self.native_size

    @property
    def path(self) -> str:
        return self.source.origin or self.source.paths[0]

    def _frames(self, wanted: set[int] | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Decode in order; with ``wanted``, skip other frames (grab without retrieve)."""
        if self.source.kind == "frames":
            for i, p in enumerate(self.source.paths):
                if wanted is not None and i not in wanted:
                    continue
                yield i, _resize(_read_image(p), self.out_size)
            return
        path = self.source.paths[0]
        cap = _open_video(path)
        try:
            i = 0
            last = max(wanted) if wanted else None
            while not self._stop.is_set():
                if last is not None and i > last:
                    break
                if wanted is not None and i not in wanted:
                    if not cap.grab():
                        break
                    i += 1
                    continue
                ok, bgr = cap.read()
                if not ok or bgr is None:
                    break
                yield i, _resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), self.out_size)
                i += 1
        finally:
            cap.release()

    def read_frames(self, indices) -> list[tuple[int, np.ndarray]]:
        """Decode only the given frame indices (in this thread), e.g. for a calibration pass."""
        wanted = set(int(i) for i in indices)
        return list(self._frames(wanted)) if wanted else []

    def _worker(self) -> None:
        q = self._queue
        try:
            for item in self._frames():
                while not self._stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except BaseException as e:  # handed to the consumer, raised there
            q.put(e)
            return
        q.put(_END)

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        self.close()
        self._stop.clear()
        self._queue = queue.Queue(maxsize=self.queue_size)
        self._thread = threading.Thread(target=self._worker, name="FrameReader", daemon=True)
        self._thread.start()
        try:
            while True:
                item = self._queue.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    if isinstance(item, SeguncertError):
                        raise item
                    raise DataError(f"failed decoding {self.path}: {item}") from item
                yield item
        finally:
            self.close()

    def close(self) -> None:
        """Stop the decoding thread (unblocks it if the queue is full)."""
        if self._thread is not None:
            self._stop.set()
            while self._thread.is_alive():
                try:
                    self._queue.get(timeout=0.05)
                except queue.Empty:
                    pass
            self._thread.join()
            self._thread = None


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
