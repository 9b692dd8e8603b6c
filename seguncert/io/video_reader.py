"""Video and frame-sequence input: input discovery and a threaded frame reader.

A *source* is one video file, one folder of frames, one image, or the images matched by a
glob. :class:`FrameReader` decodes a source in a background thread (a bounded queue, so decoding
overlaps inference without reading a whole video into memory).
"""

from __future__ import annotations

import glob as globlib
import os
import queue
import re
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

from ..errors import DataError, SeguncertError  # noqa: E402

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
DEFAULT_FPS = 10.0  # frame rate given to frame folders and images


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
