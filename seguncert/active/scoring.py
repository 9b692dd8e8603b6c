"""Score every S-th frame of a set of inputs into the score log: the loop of select_frames.

Frames go through the sampler one at a time (batch 1), and every frame sees the same seeded
dropout masks. The sampler's masks are drawn for the whole batch, so with batches a frame's
score would depend on its neighbours and on where a resumed run restarts; at batch 1 it is a
function of the frame and of the log header only, and all frames are judged by the same T
weight draws (common random numbers: differences between frames are not mask noise).

Decoding runs in the reader's thread. Frame folders are thinned before decoding (only the
frames on the stride and not yet in the log are read); a video is decoded through, since a
decoder cannot seek cheaply, and the frames off the stride are dropped.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..io.video_reader import FrameReader, Source
from .acquisition import ACQUISITION_VERSION, THUMB_HW, FrameScore, frame_scores, thumbnail


@dataclass
class SourcePlan:
    """How one input is scored: every ``stride``-th frame, resized to ``size`` (H, W)."""

    source: Source
    stride: int
    size: tuple[int, int]
    fps: float
    frame_count: int | None

    @property
    def name(self) -> str:
        return self.source.name

    def planned(self) -> int | None:
        """Frames on the stride (None when the video does not say how many frames it has)."""
        return None if self.frame_count is None else math.ceil(self.frame_count / self.stride)

    def time_s(self, index: int) -> float | None:
        """Seconds into a video (None for frame files, whose path names them)."""
        return round(index / self.fps, 4) if self.source.kind == "video" else None

    def path(self, index: int) -> str:
        paths = self.source.paths
        return paths[0] if self.source.kind == "video" else paths[index]


def plan_source(source: Source, size, stride: int | None, model_size=None) -> SourcePlan:
    """Open ``source`` (a one-line DataError when it does not decode) and fix its plan.

    ``size``: (H, W), "native" or "model" (``model_size``, the training size, else native);
    ``stride`` None: about one frame per second of video (round(fps)), every frame of a folder."""
    reader = FrameReader(source)
    if size == "model":
        size = tuple(model_size) if model_size else "native"
    hw = tuple(reader.out_size) if size == "native" else tuple(int(v) for v in size)
    if stride is None:
        stride = max(1, round(reader.fps)) if source.kind == "video" else 1
    return SourcePlan(source, int(stride), hw, reader.fps, reader.frame_count)


def _input_bytes(source: Source) -> int:
    return sum(os.path.getsize(p) for p in source.paths if os.path.isfile(p))


def score_header(infos: list[dict], plans: list[SourcePlan], mc_samples: int, seed: int) -> dict:
    """What the scores depend on (the first line of scores.jsonl): the checkpoints' weights and
    calibration, T, the seed, and per input its files, stride and scoring size."""

    def digest(obj) -> str:
        return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]

    return {
        "acquisition_version": ACQUISITION_VERSION,
        "thumb_hw": list(THUMB_HW),
        "checkpoints": [
            {"weights_sha256": i["weights_sha256"], "calibration": digest(i.get("calibration"))}
            for i in infos
        ],
        "mc_samples": int(mc_samples),
        "seed": int(seed),
        "inputs": [
            {
                "name": p.name,
                "kind": p.source.kind,
                "first": os.path.abspath(p.source.paths[0]),
                "files": len(p.source.paths),
                "bytes": _input_bytes(p.source),
                "stride": p.stride,
                "size": list(p.size),
            }
            for p in plans
        ],
    }


def frames_to_score(plan: SourcePlan, done) -> Iterator[tuple[int, np.ndarray]]:
    """(index, uint8 RGB (H, W, 3) at the scoring size) of the frames on the stride that
    ``done(index)`` does not mark as scored, in order."""
    src = plan.source
    if src.kind == "frames":
        keep = [i for i in range(0, len(src.paths), plan.stride) if not done(i)]
        if not keep:
            return
        thin = Source("frames", [src.paths[i] for i in keep], src.name, src.origin)
        for k, rgb in FrameReader(thin, size=plan.size):
            yield keep[k], rgb
        return
    if plan.frame_count and all(done(i) for i in range(0, plan.frame_count, plan.stride)):
        return  # a finished video is not decoded again (a short count decodes through: harmless)
    for i, rgb in FrameReader(src, size=plan.size):
        if i % plan.stride == 0 and not done(i):
            yield i, rgb


class FrameScorer:
    """``FrameScorer(predict, class_weights, num_classes, seed)(plan, index, rgb)`` ->
    (:class:`FrameScore`, maps). ``predict`` is a batch-1
    :class:`~seguncert.inference.frames.FramePredictor`; ``class_weights`` (C,) normalised to
    mean 1, or None."""

    def __init__(self, predict, class_weights, num_classes: int, seed: int) -> None:
        self.predict, self.weights = predict, class_weights
        self.num_classes, self.seed = int(num_classes), int(seed)
        self._warm: set[tuple] = set()

    def maps(self, rgb: np.ndarray) -> dict:
        """The sampler's per-pixel maps of one frame, (H, W) arrays.

        The sampler runs the first call of each frame size one sample at a time (to measure
        its memory) and later ones in chunks; chunking changes float rounding (~1e-6). A black
        frame of each new size goes first, so every real frame is sampled the same way and a
        resumed run writes the same scores as one never stopped."""
        if rgb.shape not in self._warm:
            self.predict([np.zeros_like(rgb)])
            self._warm.add(rgb.shape)
        return self.predict([rgb])[0]

    def __call__(self, plan: SourcePlan, index: int, rgb: np.ndarray):
        maps = self.maps(rgb)
        s = frame_scores(
            maps,
            self.weights,
            num_classes=self.num_classes,
            seed=self.seed,
            index=index,
            source=plan.name,
        )
        class_mi = s.pop("class_mi")
        record = FrameScore(
            plan.name, int(index), plan.time_s(index), plan.path(index), s, class_mi,
            thumbnail(rgb),
        )  # fmt: skip
        return record, maps


def score_all(plans: list[SourcePlan], scorer: FrameScorer, log, progress, key: str) -> int:
    """Score every planned frame not yet in ``log`` (a :class:`~seguncert.active.ScoreLog`),
    appending each record as soon as it exists; returns the number of frames scored."""
    scored = 0
    best = -math.inf
    for plan in plans:
        for index, rgb in frames_to_score(plan, lambda i, n=plan.name: log.done(n, i)):
            record, _ = scorer(plan, index, rgb)
            log.append(record)
            scored += 1
            best = max(best, record.score(key))
            progress.update(1, images=1, best=best)
    return scored
