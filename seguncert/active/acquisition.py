"""Acquisition scores of one frame from its MC sampler maps, and the record kept per frame.

Inputs are the per-pixel maps of :class:`~seguncert.uncertainty.sampler.MCSampler` for one frame,
(H, W) tensors or arrays: ``epistemic`` I_i = H[p̄_i] - (1/T) Σ_t H[p_{t,i}] (mutual
information between the label and the weights), ``entropy`` H[p̄_i] (total), ``pred``
ŷ_i = argmax_c p̄_{i,c}.
All scores are in nats (except ``random``, in [0, 1)); N = H·W pixels:

- ``bald`` = (1/N) Σ_i I_i (Houlsby et al. 2011; Gal, Islam & Ghahramani 2017);
- ``entropy`` = (1/N) Σ_i H[p̄_i];
- ``weighted_bald`` = (1/N) Σ_i w̃_{ŷ_i} I_i with w̃_c = w_c / ((1/C) Σ_c' w_c'): class weights
  normalised to mean 1 (e.g. the checkpoint's median-frequency ``meta.class_weights``), so
  uncertainty on pixels predicted as rare classes counts more. Without weights w̃ = 1 and it
  equals ``bald``; it is not a weighted *mean* (no division by Σ w̃), so a frame with more
  rare-class pixels scores higher at equal per-pixel MI;
- ``random`` = a uniform number in [0, 1) that depends only on (seed, source, frame index): the
  random-acquisition baseline, reproducible across runs and resumes.

``class_mi[c]`` = mean I_i over the pixels predicted as c (None where no pixel is), for reports.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from ..errors import SeguncertError

ACQUISITION_VERSION = 1  # bump when a score or the thumbnail changes: old scores.jsonl refused
ACQUISITIONS = ("bald", "entropy", "weighted_bald", "random")
THUMB_HW = (12, 16)  # appearance thumbnail, (H, W) pixels
THUMB_DECIMALS = 4  # stored precision: the in-memory record equals the one read back from JSON


def normalised_class_weights(weights, num_classes: int) -> torch.Tensor | None:
    """Class weights (C,) scaled to mean 1, float64; None stays None (uniform weighting)."""
    if weights is None:
        return None
    w = torch.as_tensor(weights, dtype=torch.float64).flatten()
    if w.numel() != num_classes or not bool(torch.isfinite(w).all() and (w > 0).all()):
        raise SeguncertError(
            f"class weights must be {num_classes} positive numbers, got {w.tolist()}"
        )
    return w / w.mean()


def random_score(seed: int, index: int, source: str = "") -> float:
    """Uniform in [0, 1) from (seed, source, index) via BLAKE2b (the same in every process)."""
    digest = hashlib.blake2b(f"{int(seed)}:{source}:{int(index)}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big") / 2.0**64


def class_mean_mi(mi: torch.Tensor, pred: torch.Tensor, num_classes: int) -> list[float | None]:
    """Mean MI (nats) over the pixels of each predicted class; mi, pred (H, W) -> C values."""
    p = pred.flatten().long()
    sums = torch.bincount(p, weights=mi.flatten().double(), minlength=num_classes)
    counts = torch.bincount(p, minlength=num_classes)
    return [
        float(s) / int(n) if int(n) else None
        for s, n in zip(sums[:num_classes].tolist(), counts[:num_classes].tolist(), strict=True)
    ]


def frame_scores(
    maps: dict,
    class_weights: torch.Tensor | None = None,
    *,
    num_classes: int | None = None,
    seed: int = 0,
    index: int = 0,
    source: str = "",
) -> dict:
    """Scores of one frame (module docstring): ``maps`` holds ``epistemic``, ``entropy`` and
    ``pred`` of shape (H, W) (tensors or arrays, a float ``pred`` is fine). ``class_weights``
    (C,) is used as given (normalise with :func:`normalised_class_weights`); ``num_classes``
    defaults to its length. Returns {bald, entropy, weighted_bald, random, class_mi}."""
    mi = torch.as_tensor(np.asarray(maps["epistemic"]), dtype=torch.float64)
    ent = torch.as_tensor(np.asarray(maps["entropy"]), dtype=torch.float64)
    pred = torch.as_tensor(np.asarray(maps["pred"])).round().long()
    if mi.dim() != 2 or ent.shape != mi.shape or pred.shape != mi.shape:
        raise SeguncertError(
            f"frame_scores expects (H, W) maps of one frame, got epistemic {tuple(mi.shape)}, "
            f"entropy {tuple(ent.shape)}, pred {tuple(pred.shape)}"
        )
    if num_classes is None:
        if class_weights is None:
            raise SeguncertError("frame_scores needs num_classes or class_weights")
        num_classes = len(class_weights)
    if int(pred.min()) < 0 or int(pred.max()) >= num_classes:
        raise SeguncertError(f"predicted classes outside 0..{num_classes - 1}")
    w = (
        torch.ones(num_classes, dtype=torch.float64)
        if class_weights is None
        else torch.as_tensor(class_weights, dtype=torch.float64)
    )
    return {
        "bald": float(mi.mean()),
        "entropy": float(ent.mean()),
        "weighted_bald": float((w[pred] * mi).mean()),
        "random": random_score(seed, index, source),
        "class_mi": class_mean_mi(mi, pred, num_classes),
    }


def thumbnail(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB frame (H, W, 3) -> grey THUMB_HW thumbnail, flattened (192,) float64, zero mean
    and unit L2 norm (cosine similarity is then a dot product), rounded to THUMB_DECIMALS.
    A flat frame (no contrast) gives all zeros."""
    grey = cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.uint8), cv2.COLOR_RGB2GRAY)
    small = cv2.resize(grey, THUMB_HW[::-1], interpolation=cv2.INTER_AREA).astype(np.float64)
    v = small.flatten() - small.mean()
    norm = float(np.linalg.norm(v))
    if norm < 1e-6:
        return np.zeros(v.size)
    return np.round(v / norm, THUMB_DECIMALS)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two thumbnails in [-1, 1]; two flat (all-zero) thumbnails are
    identical (1), a flat and a textured one unrelated (0)."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float(np.clip(np.dot(a, b) / (na * nb), -1.0, 1.0))


@dataclass
class FrameScore:
    """One scored frame: where it is, its scores (:func:`frame_scores`) and its thumbnail.

    ``time_s`` is index / fps for a video (None for frame files, whose ``path`` names them)."""

    source: str
    index: int
    time_s: float | None
    path: str | None
    scores: dict[str, float]
    class_mi: list[float | None]
    thumb: np.ndarray = field(repr=False)

    def score(self, key: str) -> float:
        """The score under acquisition ``key``; NaN ranks last (as -inf)."""
        v = float(self.scores[key])
        return v if math.isfinite(v) else -math.inf

    def to_json(self) -> dict:
        return {
            "source": self.source,
            "index": self.index,
            "time_s": self.time_s,
            "path": self.path,
            "scores": self.scores,
            "class_mi": self.class_mi,
            "thumb": [float(v) for v in self.thumb],
        }

    @classmethod
    def from_json(cls, d: dict) -> FrameScore:
        """Inverse of :meth:`to_json`; KeyError/TypeError/ValueError on a malformed record."""
        return cls(
            str(d["source"]),
            int(d["index"]),
            None if d["time_s"] is None else float(d["time_s"]),
            d["path"],
            {k: float(d["scores"][k]) for k in ACQUISITIONS},
            [None if v is None else float(v) for v in d["class_mi"]],
            np.asarray(d["thumb"], dtype=np.float64),
        )
