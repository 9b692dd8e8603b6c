"""How well uncertainty maps flag misclassified pixels, from fine fixed-size histograms.

Every map gets a :class:`~seguncert.metrics.base.Binning` (``ranges[name] = (lo, hi)`` for a
bounded map: entropy and MI in [0, log C], probability variance in [0, 0.25]; a missing or None
range means unbounded non-negative, squashed by u / (1 + u) before binning: AUROC, AUPR, AURC
and the curves depend only on the pixels' order, which the squash keeps). Pixels in one bin
are ties: they enter or leave together, one threshold step, and curve points inside a bin are
pro-rata (the expected value under a random order within the bin).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .base import Binning, StreamingMetric, check_finite, check_same_shape, kept_sums

DEFAULT_PERCENTILES = tuple(range(0, 100, 5))
COVERAGES = np.linspace(0.01, 1.0, 100)


def _maps_and_mask(
    names: Sequence[str], maps: Mapping[str, torch.Tensor], correct: torch.Tensor, valid
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    missing = [n for n in names if n not in maps]
    if missing:
        raise ValueError(f"uncertainty maps {missing} missing from update (got {sorted(maps)})")
    if valid is None:
        valid = torch.ones_like(correct, dtype=torch.bool)
    out = {n: maps[n] for n in names}
    check_same_shape(correct=correct, valid=valid, **out)
    if correct.dim() != 3:
        raise ValueError(f"expected (B, H, W) maps, got {tuple(correct.shape)}")
    return out, correct.bool(), valid.bool()


def aurc_from_hist(counts: np.ndarray, errors: np.ndarray) -> float:
    """Area under the risk-coverage curve, (1/N) sum_k risk(k) over k = 1..N kept pixels in
    ascending-uncertainty order, exact in expectation over random order within each bin:
    a bin of n pixels (e errors) after K0 kept (E0 errors) adds
    sum_j (E0 + j e/n) / (K0 + j) = E0 S + (e/n)(n - K0 S),  S = psi(K0+n+1) - psi(K0+1)."""
    n = torch.as_tensor(np.asarray(counts, np.float64))
    e = torch.as_tensor(np.asarray(errors, np.float64))
    total = float(n.sum())
    if total <= 0:
        return float("nan")
    k0 = torch.cumsum(n, 0) - n
    e0 = torch.cumsum(e, 0) - e
    s = torch.special.digamma(k0 + n + 1) - torch.special.digamma(k0 + 1)
    part = e0 * s + torch.where(n > 0, e / n.clamp_min(1), 0.0) * (n - k0 * s)
    return float(part[n > 0].sum()) / total


class UncertaintyQuality(StreamingMetric):
    """Error detection by uncertainty maps (uncertainty = score for "pixel misclassified").

    ``UncertaintyQuality(map_names, n_bins=2048, ranges=None, percentiles=0..95 step 5)``;
    ``update(maps, correct, valid=None)``: maps name -> (B, H, W) (extra keys ignored),
    correct (B, H, W) bool (pred == target), valid (B, H, W) bool (labelled pixels).

    ``compute()`` -> {"count", "error_rate", "maps": {name: {
        auroc, aupr (average precision, errors positive), aurc, eaurc (AURC minus the oracle's),
        precision_curve: {percentile: removed %, accuracy: of the rest} (Kendall & Gal Fig. 3),
        risk_coverage: {coverage: 0.01..1, risk: error rate of the least uncertain share}}}}.
    """

    def __init__(
        self,
        map_names: Sequence[str],
        n_bins: int = 2048,
        ranges: Mapping[str, tuple[float, float] | None] | None = None,
        percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    ) -> None:
        ranges = dict(ranges or {})
        self.map_names = list(map_names)
        self.binnings = {n: Binning(n_bins, ranges.get(n)) for n in self.map_names}
        self.percentiles = [float(p) for p in percentiles]
        super().__init__(
            {"maps": {n: b.describe() for n, b in self.binnings.items()}, "pct": self.percentiles}
        )
        m = len(self.map_names)
        self._add_state("correct", (m, n_bins), torch.int64)
        self._add_state("error", (m, n_bins), torch.int64)

    @torch.no_grad()
    def update(self, maps: Mapping[str, torch.Tensor], correct: torch.Tensor, valid=None) -> None:
        maps, correct, valid = _maps_and_mask(self.map_names, maps, correct, valid)
        self._follow(correct)
        ok = correct[valid]
        for i, name in enumerate(self.map_names):
            u = maps[name].to(correct.device)[valid]
            check_finite(f"uncertainty map {name!r}", u)
            idx = self.binnings[name].index(u)
            nb = self.binnings[name].n_bins
            self.state["correct"][i] += torch.bincount(idx[ok], minlength=nb)
            self.state["error"][i] += torch.bincount(idx[~ok], minlength=nb)

    def compute(self) -> dict:
        cor = self.state["correct"].cpu().numpy().astype(np.float64)
        err = self.state["error"].cpu().numpy().astype(np.float64)
        total = float(cor[0].sum() + err[0].sum()) if self.map_names else 0.0
        n_err = float(err[0].sum()) if self.map_names else 0.0
        out = {"count": int(total), "error_rate": n_err / total if total else float("nan")}
        out["maps"] = {n: self._one(cor[i], err[i]) for i, n in enumerate(self.map_names)}
        return out

    def _one(self, cor: np.ndarray, err: np.ndarray) -> dict:
        n_c, n_e = cor.sum(), err.sum()
        total = n_c + n_e
        nan = float("nan")
        if n_c > 0 and n_e > 0:
            below = np.cumsum(cor) - cor  # correct pixels strictly less uncertain
            auroc = float((err * (below + 0.5 * cor)).sum() / (n_e * n_c))
            tp, fp = np.cumsum(err[::-1]), np.cumsum(cor[::-1])  # thresholds from the top
            hit = err[::-1] > 0
            aupr = float((err[::-1][hit] / n_e * tp[hit] / (tp[hit] + fp[hit])).sum())
        else:
            auroc = aupr = nan
        aurc = aurc_from_hist(cor + err, err)
        best = aurc_from_hist(np.array([n_c, n_e]), np.array([0.0, n_e]))
        all_px = cor + err
        kept = total * (1.0 - np.asarray(self.percentiles) / 100.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            acc = kept_sums(all_px, cor, kept) / kept
            risk = kept_sums(all_px, err, COVERAGES * total) / (COVERAGES * total)
        return {
            "auroc": auroc,
            "aupr": aupr,
            "aurc": aurc,
            "eaurc": aurc - best,
            "precision_curve": {"percentile": list(self.percentiles), "accuracy": acc.tolist()},
            "risk_coverage": {"coverage": COVERAGES.tolist(), "risk": risk.tolist()},
        }


def patch_sums(x: torch.Tensor, k: int) -> torch.Tensor:
    """(B, H, W) -> (B, ceil(H/k), ceil(W/k)) sums over k x k patches (zero-padded edges)."""
    b, h, w = x.shape
    ph, pw = -h % k, -w % k
    if ph or pw:
        x = torch.nn.functional.pad(x, (0, pw, 0, ph))
    return x.view(b, (h + ph) // k, k, (w + pw) // k, k).sum(dim=(2, 4))


class PAvPU(StreamingMetric):
    """Patch accuracy vs patch uncertainty (Mukhoti & Gal 2018), for every threshold at once.

    Per image, ``patch_size`` x ``patch_size`` patches (the last row/column of patches may be
    partial): a patch counts only its valid pixels, is skipped when it has none, is accurate
    when more than half of its valid pixels are right, and its uncertainty is the mean over its
    valid pixels. Histograms of patch uncertainty for accurate / inaccurate patches give, for a
    threshold t (certain = mean uncertainty < t), n_ac, n_au, n_ic, n_iu,
    PAvPU = (n_ac + n_iu) / n, p(accurate | certain) = n_ac / (n_ac + n_ic),
    p(uncertain | inaccurate) = n_iu / (n_ic + n_iu). Exact for t on a bin edge; other t are
    snapped to the nearest edge (the value used is reported).

    ``PAvPU(map_names, n_thresholds=256, ranges=None, patch_size=4, threshold=None)``;
    ``threshold``: a fixed threshold (float, or name -> float) reported as ``at_threshold``.
    ``update(maps, correct, valid=None)`` as :class:`UncertaintyQuality`.
    ``compute(threshold=None)`` -> {name: {"patches", "sweep": lists over the thresholds
    (threshold = every bin edge, in map units; certain_fraction = the threshold's quantile among
    patches; pavpu, p_accurate_given_certain, p_uncertain_given_inaccurate, n_ac, n_au, n_ic,
    n_iu), "best": the sweep point maximising PAvPU (chosen with hindsight: optimistic),
    "at_threshold": the same scalars at the given / constructor threshold, or None}}.
    """

    def __init__(
        self,
        map_names: Sequence[str],
        n_thresholds: int = 256,
        ranges: Mapping[str, tuple[float, float] | None] | None = None,
        patch_size: int = 4,
        threshold: float | Mapping[str, float] | None = None,
    ) -> None:
        ranges = dict(ranges or {})
        self.map_names = list(map_names)
        self.binnings = {n: Binning(n_thresholds, ranges.get(n)) for n in self.map_names}
        self.patch_size = int(patch_size)
        self.threshold = threshold
        cfg = {n: b.describe() for n, b in self.binnings.items()}
        super().__init__({"maps": cfg, "patch_size": self.patch_size})
        m = len(self.map_names)
        self._add_state("accurate", (m, n_thresholds), torch.int64)
        self._add_state("inaccurate", (m, n_thresholds), torch.int64)

    @torch.no_grad()
    def update(self, maps: Mapping[str, torch.Tensor], correct: torch.Tensor, valid=None) -> None:
        maps, correct, valid = _maps_and_mask(self.map_names, maps, correct, valid)
        self._follow(correct)
        k = self.patch_size
        n_valid = patch_sums(valid.long(), k)
        n_right = patch_sums((correct & valid).long(), k)
        keep = n_valid > 0
        accurate = (2 * n_right > n_valid)[keep]
        for i, name in enumerate(self.map_names):
            u = torch.where(valid, maps[name].to(correct.device).double(), 0.0)
            check_finite(f"uncertainty map {name!r}", u)
            mean_u = patch_sums(u, k)[keep] / n_valid[keep]
            idx = self.binnings[name].index(mean_u)
            nb = self.binnings[name].n_bins
            self.state["accurate"][i] += torch.bincount(idx[accurate], minlength=nb)
            self.state["inaccurate"][i] += torch.bincount(idx[~accurate], minlength=nb)

    def compute(self, threshold: float | Mapping[str, float] | None = None) -> dict:
        threshold = self.threshold if threshold is None else threshold
        out = {}
        for i, name in enumerate(self.map_names):
            t = threshold.get(name) if isinstance(threshold, Mapping) else threshold
            acc = self.state["accurate"][i].cpu().numpy().astype(np.float64)
            inacc = self.state["inaccurate"][i].cpu().numpy().astype(np.float64)
            out[name] = self._one(self.binnings[name], acc, inacc, t)
        return out

    @staticmethod
    def _one(binning: Binning, acc: np.ndarray, inacc: np.ndarray, t: float | None) -> dict:
        edges = binning.edges()
        n_ac = np.concatenate([[0.0], np.cumsum(acc)])  # certain: bins below edge k
        n_ic = np.concatenate([[0.0], np.cumsum(inacc)])
        if binning.squash:  # last edge is +inf in map units: drop it (JSON has no inf)
            edges, n_ac, n_ic = edges[:-1], n_ac[:-1], n_ic[:-1]
        n_au, n_iu = acc.sum() - n_ac, inacc.sum() - n_ic
        total = acc.sum() + inacc.sum()
        with np.errstate(invalid="ignore", divide="ignore"):
            sweep = {
                "threshold": edges,
                "certain_fraction": (n_ac + n_ic) / total,
                "pavpu": (n_ac + n_iu) / total,
                "p_accurate_given_certain": n_ac / (n_ac + n_ic),
                "p_uncertain_given_inaccurate": n_iu / (n_ic + n_iu),
                "n_ac": n_ac,
                "n_au": n_au,
                "n_ic": n_ic,
                "n_iu": n_iu,
            }

        def point(k: int) -> dict:
            return {key: float(v[k]) for key, v in sweep.items()}

        best = point(int(np.nanargmax(sweep["pavpu"]))) if total > 0 else None
        at = None
        if t is not None:
            s = float(t) / (1.0 + float(t)) if binning.squash else float(t)
            lo, hi = binning.range
            k = int(np.clip(np.rint((s - lo) / (hi - lo) * binning.n_bins), 0, len(edges) - 1))
            at = point(k)
        return {
            "patches": int(total),
            "sweep": {key: v.tolist() for key, v in sweep.items()},
            "best": best,
            "at_threshold": at,
        }
