"""Calibration of per-pixel class probabilities (Guo et al. 2017) from fixed-size histograms.

Binning convention (matches torchmetrics' ``binary/multiclass_calibration_error`` exactly):
edges = ``linspace(0, 1, n_bins + 1)`` in the probabilities' dtype, bin index =
``bucketize(p, edges, right=True) - 1``, so bin b is the half-open ``[e_b, e_{b+1})``.
The one difference: a probability of exactly 1.0 goes into the last bin (closed ``[e_{B-1}, 1]``)
here, whereas torchmetrics gives it an extra (B+1)-th bin of its own. With no confidence equal
to 1.0 the two agree bin for bin (torchmetrics casts confidences to float32; pass float32
probabilities for bit-identical binning).

State (all sums, O(C x n_bins)): top-label count / sum of confidence / number correct per bin;
class-wise (one-vs-rest, every pixel binned once per class by p_c) count / sum of p_c / number
with y = c per (class, bin); totals for NLL and Brier. Inputs are processed in row chunks of
about ``chunk_pixels`` pixels, so the temporaries stay small whatever the batch size.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.common import IGNORE_INDEX
from ..errors import DataError
from .base import CHUNK_PIXELS, StreamingMetric, row_chunks
from .segmentation import valid_targets

PROB_FLOOR = 1e-12  # NLL clamps p_y here so a confidently wrong pixel costs 27.6 nats, not inf


class CalibrationMetrics(StreamingMetric):
    """Top-label and class-wise calibration, NLL and Brier over every labelled pixel.

    ``compute()`` keys (NaN where undefined, e.g. an empty bin or no pixels):
      ece, mce               top-label: sum_b n_b/N |acc_b - conf_b| and max over non-empty bins
      classwise_ece          list[C]: sum_b n_cb/N |freq_cb - conf_cb|, bins over p_c of every
                             pixel, freq = share of the bin's pixels with y = c
      mean_classwise_ece     mean of classwise_ece over the C classes
      nll                    -mean log max(p_y, 1e-12)
      brier                  mean sum_c (p_c - 1[y = c])^2   (in [0, 2])
      reliability            top-label bins: edges (n_bins+1), counts, accuracy, confidence
                             (lists of n_bins), ece, mce
      classwise_reliability  edges, counts / confidence / frequency (C x n_bins lists of lists),
                             accuracy (= frequency, the key the reliability plots read), ece (list)
      count                  labelled pixels
    """

    def __init__(
        self,
        num_classes: int,
        n_bins: int = 15,
        ignore_index: int = IGNORE_INDEX,
        chunk_pixels: int = CHUNK_PIXELS,
    ) -> None:
        if num_classes < 2 or n_bins < 1:
            raise ValueError(f"need num_classes >= 2 and n_bins >= 1, got {num_classes}, {n_bins}")
        super().__init__(
            {"num_classes": int(num_classes), "n_bins": int(n_bins), "ignore_index": ignore_index}
        )
        self.num_classes, self.n_bins = int(num_classes), int(n_bins)
        self.ignore_index = int(ignore_index)
        self.chunk_pixels = int(chunk_pixels)
        c, n = self.num_classes, self.n_bins
        self._add_state("top_count", (n,), torch.int64)
        self._add_state("top_conf", (n,), torch.float64)
        self._add_state("top_correct", (n,), torch.int64)
        self._add_state("cw_count", (c, n), torch.int64)
        self._add_state("cw_prob", (c, n), torch.float64)
        self._add_state("cw_hits", (c, n), torch.int64)
        self._add_state("count", (), torch.int64)
        self._add_state("nll_sum", (), torch.float64)
        self._add_state("brier_sum", (), torch.float64)

    @torch.no_grad()
    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        """probs (B, C, H, W) class probabilities (softmax already applied); target (B, H, W)."""
        c = self.num_classes
        if probs.dim() != 4 or probs.shape[1] != c or target.shape != probs[:, 0].shape:
            raise ValueError(
                f"expected probs (B, {c}, H, W) and target (B, H, W), "
                f"got {tuple(probs.shape)} and {tuple(target.shape)}"
            )
        if probs.dtype in (torch.float16, torch.bfloat16):
            probs = probs.float()  # bucketize/sums need full precision
        self._follow(probs)
        valid = valid_targets(target.to(probs.device), c, self.ignore_index)
        target = target.to(probs.device)
        edges = torch.linspace(0, 1, self.n_bins + 1, dtype=probs.dtype, device=probs.device)
        for b in range(probs.shape[0]):
            for rows in row_chunks(probs.shape[2], probs.shape[3], self.chunk_pixels):
                m = valid[b, rows].reshape(-1)
                if not bool(m.any()):
                    continue
                p = probs[b, :, rows].reshape(c, -1)[:, m]  # (C, P)
                t = target[b, rows].reshape(-1)[m].long()  # (P,)
                self._update_chunk(p, t, edges)

    def _update_chunk(self, p: torch.Tensor, t: torch.Tensor, edges: torch.Tensor) -> None:
        c, n = self.num_classes, self.n_bins
        if not bool(((p >= -1e-6) & (p <= 1 + 1e-6)).all()):  # one pass; NaN fails it too
            raise DataError(
                "probs must be finite and lie in [0, 1] (pass softmax probabilities, not logits)"
            )
        s = self.state
        conf, pred = p.max(dim=0)
        correct = pred == t
        bins = self._bin(conf, edges)
        s["top_count"] += torch.bincount(bins, minlength=n)
        s["top_conf"] += torch.bincount(bins, weights=conf.double(), minlength=n)
        s["top_correct"] += torch.bincount(bins[correct], minlength=n)
        cbins = self._bin(p, edges)  # (C, P)
        flat = (cbins + torch.arange(c, device=p.device).unsqueeze(1) * n).reshape(-1)
        s["cw_count"] += torch.bincount(flat, minlength=c * n).view(c, n)
        pd = p.double()
        s["cw_prob"] += torch.bincount(flat, weights=pd.reshape(-1), minlength=c * n).view(c, n)
        hit_bins = cbins.gather(0, t.unsqueeze(0)).squeeze(0)
        s["cw_hits"] += torch.bincount(t * n + hit_bins, minlength=c * n).view(c, n)
        py = pd.gather(0, t.unsqueeze(0)).squeeze(0)
        s["count"] += t.numel()
        s["nll_sum"] -= torch.log(py.clamp_min(PROB_FLOOR)).sum()
        s["brier_sum"] += (pd.square().sum(0) - 2.0 * py + 1.0).sum()

    def _bin(self, x: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        # torchmetrics' rule; 1.0 (index n_bins) folds into the last bin
        return (torch.bucketize(x, edges, right=True) - 1).clamp_(0, self.n_bins - 1)

    def compute(self) -> dict:
        s = {k: v.cpu().numpy() for k, v in self.state.items()}
        total = float(s["count"])
        edges = np.linspace(0.0, 1.0, self.n_bins + 1).tolist()
        top_conf, top_acc = (
            _ratio(s["top_conf"], s["top_count"]),
            _ratio(s["top_correct"], s["top_count"]),
        )
        ece, mce = _ece(s["top_count"], top_acc, top_conf, total)
        cw_conf = _ratio(s["cw_prob"], s["cw_count"])
        cw_freq = _ratio(s["cw_hits"], s["cw_count"])
        cw_ece = [
            _ece(s["cw_count"][k], cw_freq[k], cw_conf[k], total)[0] for k in range(len(cw_conf))
        ]
        nan = float("nan")
        freq = cw_freq.tolist()
        return {
            "ece": ece,
            "mce": mce,
            "classwise_ece": cw_ece,
            "mean_classwise_ece": float(np.mean(cw_ece)) if total > 0 else nan,
            "nll": float(s["nll_sum"]) / total if total > 0 else nan,
            "brier": float(s["brier_sum"]) / total if total > 0 else nan,
            "reliability": {
                "edges": edges,
                "counts": s["top_count"].tolist(),
                "accuracy": top_acc.tolist(),
                "confidence": top_conf.tolist(),
                "ece": ece,
                "mce": mce,
            },
            "classwise_reliability": {
                "edges": edges,
                "counts": s["cw_count"].tolist(),
                "confidence": cw_conf.tolist(),
                "frequency": freq,
                "accuracy": freq,
                "ece": cw_ece,
            },
            "count": int(total),
        }


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def _ece(
    counts: np.ndarray, acc: np.ndarray, conf: np.ndarray, total: float
) -> tuple[float, float]:
    """(ECE, MCE) from per-bin counts, accuracy and confidence (NaN in empty bins)."""
    if total <= 0:
        return float("nan"), float("nan")
    full = counts > 0
    gap = np.abs(acc[full] - conf[full])
    return float((counts[full] * gap).sum() / total), float(gap.max())
