"""Novelty (out-of-distribution) detection by per-pixel score maps, from fixed-size histograms
(Fishyscapes / SegmentMeIfYouCan protocol).

Positives are OOD pixels, negatives labelled in-distribution pixels (valid_id & ~ood); all other
pixels (void, the feathered rims of pasted objects) are ignored. A map's higher value means more
novel: pass uncertainty maps (entropy, mutual information, variance) as they are and the
max-probability baseline as ``1 - max p`` (a bounded range) or ``-max p`` (unbounded).

Every map gets ``n_bins`` bins: equal-width on ``ranges[name] = (lo, hi)``, else the whole real
line squashed by the monotonic s = (1 + u / (1 + |u|)) / 2 into (0, 1) (AUROC, AP and FPR95
depend only on the pixels' order, which the squash keeps). Pixels in one bin are ties, so the
values are exact for maps constant within bins and otherwise off by about a bin's share of pixels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .base import Binning, StreamingMetric, check_finite, check_same_shape

DEFAULT_BINS = 8192
TPR_TARGET = (19, 20)  # 95 % as a fraction, so the threshold test is exact integer arithmetic


def _squash(u: torch.Tensor) -> torch.Tensor:
    u = u.to(torch.float64)
    return 0.5 * (1.0 + u / (1.0 + u.abs()))


def _unsquash(s: np.ndarray) -> np.ndarray:
    t = 2.0 * np.asarray(s, np.float64) - 1.0
    with np.errstate(divide="ignore"):
        return t / (1.0 - np.abs(t))


def roc_from_hist(pos: np.ndarray, neg: np.ndarray) -> dict:
    """AUROC, average precision and FPR95 from per-bin positive / negative counts (n_bins,),
    bins in ascending score order; every bin boundary is a threshold (score >= t positive).

    auroc: P(score_pos > score_neg) + P(tie) / 2 (ties = same bin); ap: sum over thresholds of
    (recall step) x precision, as sklearn.metrics.average_precision_score; fpr95: FPR at the
    highest threshold whose TPR reaches 95 %; bin95: that threshold's bin (-1 when undefined).
    """
    pos, neg = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    n_pos, n_neg = pos.sum(), neg.sum()
    nan = float("nan")
    if n_pos <= 0 or n_neg <= 0:
        return {"auroc": nan, "ap": nan, "fpr95": nan, "bin95": -1}
    below = np.cumsum(neg) - neg  # negatives strictly below each bin
    auroc = float((pos * (below + 0.5 * neg)).sum() / (n_pos * n_neg))
    tp, fp = np.cumsum(pos[::-1]), np.cumsum(neg[::-1])  # thresholds from the top
    hit = pos[::-1] > 0
    ap = float((pos[::-1][hit] / n_pos * tp[hit] / (tp[hit] + fp[hit])).sum())
    tp_i = np.cumsum(np.asarray(pos, np.int64)[::-1])
    k = int(np.argmax(TPR_TARGET[1] * tp_i >= TPR_TARGET[0] * int(n_pos)))
    return {"auroc": auroc, "ap": ap, "fpr95": float(fp[k] / n_neg), "bin95": len(pos) - 1 - k}


class NoveltyMetrics(StreamingMetric):
    """OOD detection quality of score maps (higher = more novel).

    ``NoveltyMetrics(maps, ranges=None, bins=8192)``; ``update(maps, ood, valid_id)``: maps
    name -> (B, H, W) float (extra keys ignored), ood (B, H, W) bool (positives), valid_id
    (B, H, W) bool (labelled pixels; negatives are valid_id & ~ood).

    ``compute()`` -> {"n_ood", "n_id", "n_ignored", "ood_fraction" (the AP of a random map),
    "maps": {name: {auroc, ap, fpr95, threshold95 (map value where the 95 % TPR threshold's bin
    starts; None when undefined or -inf)}}}.
    """

    def __init__(
        self,
        maps: Sequence[str],
        ranges: Mapping[str, tuple[float, float] | None] | None = None,
        bins: int = DEFAULT_BINS,
    ) -> None:
        ranges = dict(ranges or {})
        self.map_names = list(maps)
        if not self.map_names:
            raise ValueError("NoveltyMetrics needs at least one map name")
        self.squash = {n: ranges.get(n) is None for n in self.map_names}
        self.binnings = {n: Binning(bins, ranges.get(n) or (0.0, 1.0)) for n in self.map_names}
        cfg = {
            n: {**b.describe(), "range": None if self.squash[n] else list(b.range)}
            for n, b in self.binnings.items()
        }
        super().__init__({"maps": cfg})
        self._add_state("ood", (len(self.map_names), int(bins)), torch.int64)
        self._add_state("id", (len(self.map_names), int(bins)), torch.int64)
        self._add_state("ignored", (1,), torch.int64)

    @torch.no_grad()
    def update(
        self, maps: Mapping[str, torch.Tensor], ood: torch.Tensor, valid_id: torch.Tensor
    ) -> None:
        missing = [n for n in self.map_names if n not in maps]
        if missing:
            raise ValueError(f"score maps {missing} missing from update (got {sorted(maps)})")
        check_same_shape(ood=ood, valid_id=valid_id, **{n: maps[n] for n in self.map_names})
        if ood.dim() != 3:
            raise ValueError(f"expected (B, H, W) maps, got {tuple(ood.shape)}")
        self._follow(ood)
        pos = ood.bool()
        neg = valid_id.to(pos.device).bool() & ~pos
        keep = pos | neg
        is_pos = pos[keep]
        self.state["ignored"] += int(keep.numel() - int(keep.sum()))
        for i, name in enumerate(self.map_names):
            u = maps[name].to(pos.device)[keep]
            check_finite(f"score map {name!r}", u)
            idx = self.binnings[name].index(_squash(u) if self.squash[name] else u)
            nb = self.binnings[name].n_bins
            self.state["ood"][i] += torch.bincount(idx[is_pos], minlength=nb)
            self.state["id"][i] += torch.bincount(idx[~is_pos], minlength=nb)

    def compute(self) -> dict:
        pos = self.state["ood"].cpu().numpy()
        neg = self.state["id"].cpu().numpy()
        n_ood, n_id = int(pos[0].sum()), int(neg[0].sum())
        out = {
            "n_ood": n_ood,
            "n_id": n_id,
            "n_ignored": int(self.state["ignored"].item()),
            "ood_fraction": n_ood / (n_ood + n_id) if n_ood + n_id else float("nan"),
            "maps": {},
        }
        for i, name in enumerate(self.map_names):
            r = roc_from_hist(pos[i], neg[i])
            k = r.pop("bin95")
            edges = self.binnings[name].edges()
            t = None if k < 0 else float(_unsquash(edges[k]) if self.squash[name] else edges[k])
            out["maps"][name] = {
                **r,
                "threshold95": t if t is not None and np.isfinite(t) else None,
            }
        return out
