"""A video through a model, into an overlay video, a per-frame CSV and a contact sheet.

Decoding runs in the reader's thread (:class:`~seguncert.io.video_reader.FrameReader`); frames
go through the predictor ``batch`` at a time; a :class:`FrameSink` thread draws the panels and
streams the composed frames into an atomic video writer, so decoding, inference and drawing /
encoding overlap. A calibration pass over a few frames spread through the video fixes the colour scales
first, so the panels of every frame share one scale; with frame-independent sampling its
results are reused when the video pass reaches those frames.
"""

from __future__ import annotations

import csv
import io
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..io.atomic import atomic_write_bytes
from ..io.video_reader import FrameReader
from ..io.video_writer import AtomicVideoWriter, write_image
from ..runtime.progress import Progress
from ..viz.overlays import contact_sheet
from ..viz.panels import (
    NOVELTY,
    PanelRenderer,
    Scales,
    frame_stats,
    result_maps,
    stats_header,
)

SHEET_FRAMES = 6
CALIBRATION_FRAMES = 8
CACHE_BYTES = 256 * 2**20  # calibration results kept for reuse, at most


@dataclass
class OutputPlan:
    """Where one input's outputs go."""

    video: Path
    stats: Path
    sheet: Path
    frames_dir: str | None = None


def spread(n: int | None, k: int) -> list[int] | None:
    """k frame indices spread evenly over n frames (None when n is unknown)."""
    return sorted(set(np.linspace(0, n - 1, min(k, n)).round().astype(int).tolist())) if n else None


def calibrate_video(reader, predict, kind, meta, fixed, threshold, batch, keep=False):
    """Fix a video's colour scales from frames spread through it (the first ones when the
    frame count is unknown); ``predict(frames) -> list of result dicts``. Returns (scales,
    {frame index: (rgb, result)} of the calibration frames when ``keep``, else {})."""
    wanted = spread(reader.frame_count, CALIBRATION_FRAMES) or range(CALIBRATION_FRAMES)
    cal = reader.read_frames(wanted)
    frames = [f for _, f in cal]
    res = [r for k in range(0, len(frames), batch) for r in predict(frames[k : k + batch])]
    scales = Scales.calibrate([result_maps(r, kind) for r in res], meta, kind, fixed, threshold)
    held = sum(f.nbytes + sum(v.nbytes for v in r.values()) for f, r in zip(frames, res))
    if not keep or held > CACHE_BYTES:  # huge frames: recompute them rather than hold them
        return scales, {}
    return scales, {i: (f, r) for (i, f), r in zip(cal, res, strict=True)}


def predict_with_cache(predict, pending: list, cached: dict) -> list[dict]:
    """Results for the (index, rgb) items of ``pending``: those the calibration pass already
    computed on the same pixels are reused, the rest go through ``predict`` as one batch."""
    hits = {
        j: cached.pop(i)[1]
        for j, (i, rgb) in enumerate(pending)
        if i in cached and np.array_equal(cached[i][0], rgb)
    }
    todo = [rgb for j, (_, rgb) in enumerate(pending) if j not in hits]
    fresh = iter(predict(todo) if todo else [])
    return [hits[j] if j in hits else next(fresh) for j in range(len(pending))]


def _batches(reader, batch: int):
    pending = []
    for item in reader:
        pending.append(item)
        if len(pending) == batch:
            yield pending
            pending = []
    if pending:
        yield pending


class FrameSink:
    """Composes, encodes and records frames in a background thread, so drawing and encoding
    frame n overlap the inference of the next batch (the reader's thread decodes ahead).
    ``put(i, rgb, res)`` queues one frame (blocking when ``depth`` frames wait: memory stays
    bounded); ``close()`` waits for the queue to drain and returns (rows, sheet); an error in
    the thread is re-raised by the next ``put`` / ``close``."""

    def __init__(self, render: PanelRenderer, plan: OutputPlan, fps: float, sheet_idx, depth=8):
        self.render, self.plan, self.fps, self.sheet_idx = render, plan, fps, sheet_idx
        self.rows, self.sheet, self.writer = [], [], None
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="FrameSink", daemon=True)
        self._thread.start()

    def put(self, i: int, rgb: np.ndarray, res: dict) -> None:
        self._put((i, rgb, res))

    def close(self) -> tuple[list, list]:
        """Wait for the queued frames; an error (or Ctrl-C) meanwhile aborts the video."""
        try:
            self._put(None)
            self._thread.join()
            self._raise()
        except BaseException:
            self.abort()
            raise
        if self.writer is not None:
            self.writer.close()
        return self.rows, self.sheet

    def abort(self) -> None:
        """Stop the thread (dropping what is queued) and remove the partial video."""
        self._stop.set()
        try:
            self._thread.join()
        finally:
            if self.writer is not None:
                self.writer.abort()

    def _put(self, item) -> None:
        while True:
            self._raise()
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _work(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    item = self._queue.get(timeout=0.1)
                except queue.Empty:
                    continue
                if item is None:
                    return
                self._one(*item)
        except BaseException as e:  # handed to the main thread by put / close
            self._error = e

    def _one(self, i: int, rgb: np.ndarray, res: dict) -> None:
        render = self.render
        pred = res["pred"].astype(np.int64) if "pred" in res else None
        maps = result_maps(res, render.kind)
        frame = render(rgb, maps, pred)
        if self.writer is None:
            self.writer = AtomicVideoWriter(self.plan.video, self.fps, frame.shape[:2])
        self.writer.write(frame)
        stats = frame_stats(i, maps, pred, render.kind, render.class_names, render.scales.threshold)
        self.rows.append(stats)
        if self.plan.frames_dir:
            write_image(f"{self.plan.frames_dir}/{i:06d}.png", frame)
        if (i in self.sheet_idx) if self.sheet_idx else len(self.sheet) < SHEET_FRAMES:
            self.sheet.append((i, frame))


def overlay_video(
    reader, predict, render: PanelRenderer, plan: OutputPlan, batch, progress, cached=None
):
    """Every frame of ``reader`` through ``predict`` (or taken, and removed, from ``cached``,
    see :func:`predict_with_cache`), composed by ``render`` in a :class:`FrameSink`, into the
    video of ``plan`` (and PNGs in ``plan.frames_dir``). Returns (statistics rows, [(index,
    frame)] for the contact sheet, frames done)."""
    done, cached = 0, {} if cached is None else cached
    sink = FrameSink(render, plan, reader.fps, spread(reader.frame_count, SHEET_FRAMES))
    try:
        for pending in _batches(reader, batch):
            results = predict_with_cache(predict, pending, cached)
            for (i, rgb), res in zip(pending, results, strict=True):
                sink.put(i, rgb, res)
            done += len(pending)
            progress.update(len(pending), images=len(pending))
        if done == 0:
            raise ConfigError(f"no frames decoded from {reader.path}")
    except BaseException:
        sink.abort()
        raise
    rows, sheet = sink.close()
    return rows, sheet, done


def probe_writer(path: Path, frame_hw: tuple[int, int], fps: float = 10.0) -> None:
    """Open (and discard) the video writer for ``frame_hw`` frames, so a size the codec refuses
    is reported before any inference runs."""
    AtomicVideoWriter(path, fps, frame_hw).abort()


def render_source(source, plan: OutputPlan, predict, calibrate, view: dict) -> tuple[int, float]:
    """One input end to end; returns (frames, frames/s). ``view``: kind, meta, panels, layout,
    size, batch, scale (fixed (lo, hi) or None), threshold."""
    reader = FrameReader(source, size=view["size"])
    kind, meta = view["kind"], view["meta"]
    t0 = time.perf_counter()  # frames/s of the whole input: the calibration pass included
    # Without a history (--temporal) frames are independent, so the video pass reuses the
    # calibration frames' results instead of computing them twice.
    scales, cal = calibrate_video(
        reader, calibrate, kind, meta, view["scale"], view["threshold"], view["batch"],
        keep=predict is calibrate,
    )  # fmt: skip
    render = PanelRenderer(kind, view["panels"], meta, scales, view["layout"])
    batch = view["batch"] if predict.batched else 1
    predict.reset()  # a new input starts a new history
    with Progress(reader.frame_count, source.name, unit="frame", rate_unit="frames") as bar:
        rows, sheet, done = overlay_video(reader, predict, render, plan, batch, bar, cal)
    fps = done / max(time.perf_counter() - t0, 1e-9)
    buf = io.StringIO()
    header = stats_header(kind, render.class_names, NOVELTY in render.panels)
    csv.writer(buf, lineterminator="\n").writerows([header, *rows])
    atomic_write_bytes(plan.stats, buf.getvalue().encode())
    labels = [f"frame {i}" for i, _ in sheet]
    write_image(plan.sheet, contact_sheet([f for _, f in sheet], 2, labels))
    return done, fps
