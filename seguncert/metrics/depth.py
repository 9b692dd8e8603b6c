"""Depth accuracy, sparsification (AUSE) and predictive-distribution calibration, streaming.

Valid pixels: ``valid`` and, when the metric has a depth range, min_depth <= target <= max_depth.
Predictions are clamped to [min_depth, max_depth] before the errors (the usual Eigen et al.
evaluation; it also keeps the logs finite), so :class:`DepthMetrics` and the f = 0 point of the
sparsification curves agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .base import Binning, StreamingMetric, check_finite, check_same_shape, kept_sums


def depth_pixels(
    pred: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor | None,
    min_depth: float | None,
    max_depth: float | None,
    clamp: bool = True,
    extra: Sequence[torch.Tensor] = (),
):
    """Flat float64 (pred, target, mask, *extra[mask]) over the valid pixels of (B, H, W) maps."""
    if valid is None:
        valid = torch.ones_like(target, dtype=torch.bool)
    check_same_shape(
        pred=pred, target=target, valid=valid, **{f"map{i}": e for i, e in enumerate(extra)}
    )
    mask = valid.bool() & torch.isfinite(target)
    if min_depth is not None:
        mask &= target >= min_depth
    if max_depth is not None:
        mask &= target <= max_depth
    mask &= target > 0
    p = pred[mask].double()
    check_finite("predicted depth", p)
    if clamp and min_depth is not None and max_depth is not None:
        p = p.clamp(min_depth, max_depth)
    return (p, target[mask].double(), mask, *[e[mask].double() for e in extra])


class DepthMetrics(StreamingMetric):
    """Standard depth errors as exact sums over valid pixels.

    ``DepthMetrics(min_depth, max_depth)``; ``update(pred, target, valid)`` all (B, H, W).
    ``compute()`` keys: abs_rel, sq_rel, rmse, rmse_log, log10, mae, delta1, delta2, delta3
    (share with max(d/d*, d*/d) < 1.25^k), count.
    """

    SUMS = ("abs_rel", "sq_rel", "sq", "sq_log", "log10", "abs")

    def __init__(self, min_depth: float, max_depth: float) -> None:
        if not 0 < min_depth < max_depth:
            raise ValueError(f"need 0 < min_depth < max_depth, got {min_depth}, {max_depth}")
        super().__init__({"min_depth": float(min_depth), "max_depth": float(max_depth)})
        self.min_depth, self.max_depth = float(min_depth), float(max_depth)
        self._add_state("sums", (len(self.SUMS),), torch.float64)
        self._add_state("counts", (4,), torch.int64)  # pixels, delta1, delta2, delta3

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None) -> None:
        self._follow(pred)
        p, t, _ = depth_pixels(
            pred, target.to(pred.device), _dev(valid, pred), self.min_depth, self.max_depth
        )
        err = p - t
        log_err = torch.log(p) - torch.log(t)
        ratio = torch.maximum(p / t, t / p)
        self.state["sums"] += torch.stack(
            [
                (err.abs() / t).sum(),
                (err.square() / t).sum(),
                err.square().sum(),
                log_err.square().sum(),
                (torch.log10(p) - torch.log10(t)).abs().sum(),
                err.abs().sum(),
            ]
        )
        self.state["counts"] += torch.stack(
            [torch.tensor(p.numel(), device=p.device)]
            + [(ratio < 1.25**k).sum() for k in (1, 2, 3)]
        )

    def compute(self) -> dict:
        s = dict(zip(self.SUMS, self.state["sums"].cpu().tolist(), strict=True))
        n, d1, d2, d3 = self.state["counts"].cpu().tolist()
        if n == 0:
            keys = (
                "abs_rel",
                "sq_rel",
                "rmse",
                "rmse_log",
                "log10",
                "mae",
                "delta1",
                "delta2",
                "delta3",
            )
            return {**{k: float("nan") for k in keys}, "count": 0}
        return {
            "abs_rel": s["abs_rel"] / n,
            "sq_rel": s["sq_rel"] / n,
            "rmse": math.sqrt(s["sq"] / n),
            "rmse_log": math.sqrt(s["sq_log"] / n),
            "log10": s["log10"] / n,
            "mae": s["abs"] / n,
            "delta1": d1 / n,
            "delta2": d2 / n,
            "delta3": d3 / n,
            "count": int(n),
        }


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    return float(((y[1:] + y[:-1]) * 0.5 * np.diff(x)).sum())  # np.trapezoid needs numpy >= 2


def _dev(x: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    return None if x is None else x.to(like.device)


class Sparsification(StreamingMetric):
    """Streaming sparsification curves and AUSE (Ilg et al. 2018) for depth uncertainty maps.

    Per map, per uncertainty bin: pixel count, sum of squared error, sum of absolute relative
    error. Removing the most uncertain fraction f keeps the (1 - f) N least uncertain pixels
    (the boundary bin pro rata), whose RMSE / AbsRel form the curve. The oracle removes the
    largest errors first: the same histograms binned by the error itself (squared error for
    RMSE, abs rel for AbsRel) on log-spaced bins over ``sq_err_range`` / ``abs_rel_range``
    (values beyond go to the end bins). AUSE = trapezoid area of (curve - oracle) over the f
    grid, in the metric's units (not normalised by the f = 0 error).

    ``Sparsification(map_names, n_bins=1000, ranges=None, fractions=0..0.99 step 0.01,
    oracle_bins=2048, sq_err_range=(1e-10, 1e4), abs_rel_range=(1e-8, 1e3), min_depth=None,
    max_depth=None)``; ranges: name -> (lo, hi) or None (unbounded: squash u / (1 + u)).
    ``update(pred, target, valid, maps)``: (B, H, W) each; maps name -> (B, H, W).
    ``compute()`` -> {"count", "fractions", "curves": {"rmse"|"abs_rel": {map: list}},
    "oracle": {"rmse"|"abs_rel": list}, "ause": {"rmse"|"abs_rel": {map: float}}}.
    """

    METRICS = ("rmse", "abs_rel")

    def __init__(
        self,
        map_names: Sequence[str],
        n_bins: int = 1000,
        ranges: Mapping[str, tuple[float, float] | None] | None = None,
        fractions: Sequence[float] | None = None,
        oracle_bins: int = 2048,
        sq_err_range: tuple[float, float] = (1e-10, 1e4),
        abs_rel_range: tuple[float, float] = (1e-8, 1e3),
        min_depth: float | None = None,
        max_depth: float | None = None,
    ) -> None:
        ranges = dict(ranges or {})
        self.map_names = list(map_names)
        self.binnings = {n: Binning(n_bins, ranges.get(n)) for n in self.map_names}
        self.oracle = {
            "rmse": Binning(oracle_bins, sq_err_range, log=True),
            "abs_rel": Binning(oracle_bins, abs_rel_range, log=True),
        }
        f = np.round(np.arange(0.0, 1.0, 0.01), 10) if fractions is None else fractions
        self.fractions = np.asarray(f, np.float64)
        if self.fractions.ndim != 1 or ((self.fractions < 0) | (self.fractions >= 1)).any():
            raise ValueError("fractions must be a 1-D sequence in [0, 1)")
        self.min_depth, self.max_depth = min_depth, max_depth
        cfg = {n: b.describe() for n, b in self.binnings.items()}
        cfg_oracle = {k: b.describe() for k, b in self.oracle.items()}
        super().__init__(
            {
                "maps": cfg,
                "oracle": cfg_oracle,
                "f": self.fractions.tolist(),
                "depth": [min_depth, max_depth],
            }
        )
        m = len(self.map_names)
        self._add_state("count", (m, n_bins), torch.int64)
        self._add_state("sq_err", (m, n_bins), torch.float64)
        self._add_state("abs_rel", (m, n_bins), torch.float64)
        self._add_state("oracle_sq_count", (oracle_bins,), torch.int64)
        self._add_state("oracle_sq_err", (oracle_bins,), torch.float64)
        self._add_state("oracle_rel_count", (oracle_bins,), torch.int64)
        self._add_state("oracle_abs_rel", (oracle_bins,), torch.float64)

    @torch.no_grad()
    def update(self, pred, target, valid, maps: Mapping[str, torch.Tensor]) -> None:
        missing = [n for n in self.map_names if n not in maps]
        if missing:
            raise ValueError(f"uncertainty maps {missing} missing from update (got {sorted(maps)})")
        self._follow(pred)
        us = [maps[n].to(pred.device) for n in self.map_names]
        p, t, _, *us = depth_pixels(
            pred,
            target.to(pred.device),
            _dev(valid, pred),
            self.min_depth,
            self.max_depth,
            extra=us,
        )
        sq = (p - t).square()
        rel = (p - t).abs() / t
        s = self.state
        for i, (name, u) in enumerate(zip(self.map_names, us, strict=True)):
            check_finite(f"uncertainty map {name!r}", u)
            idx = self.binnings[name].index(u)
            nb = self.binnings[name].n_bins
            s["count"][i] += torch.bincount(idx, minlength=nb)
            s["sq_err"][i] += torch.bincount(idx, weights=sq, minlength=nb)
            s["abs_rel"][i] += torch.bincount(idx, weights=rel, minlength=nb)
        nb = self.oracle["rmse"].n_bins
        idx = self.oracle["rmse"].index(sq)
        s["oracle_sq_count"] += torch.bincount(idx, minlength=nb)
        s["oracle_sq_err"] += torch.bincount(idx, weights=sq, minlength=nb)
        idx = self.oracle["abs_rel"].index(rel)
        s["oracle_rel_count"] += torch.bincount(idx, minlength=nb)
        s["oracle_abs_rel"] += torch.bincount(idx, weights=rel, minlength=nb)

    def compute(self) -> dict:
        s = {k: v.cpu().numpy().astype(np.float64) for k, v in self.state.items()}
        n = float(s["oracle_sq_count"].sum())
        kept = n * (1.0 - self.fractions)
        f = self.fractions

        def curve(counts, sums, metric):
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = kept_sums(counts, sums, kept) / kept
            return np.sqrt(mean) if metric == "rmse" else mean

        oracle = {
            "rmse": curve(s["oracle_sq_count"], s["oracle_sq_err"], "rmse"),
            "abs_rel": curve(s["oracle_rel_count"], s["oracle_abs_rel"], "abs_rel"),
        }
        curves = {m: {} for m in self.METRICS}
        ause = {m: {} for m in self.METRICS}
        for i, name in enumerate(self.map_names):
            for metric, key in (("rmse", "sq_err"), ("abs_rel", "abs_rel")):
                c = curve(s["count"][i], s[key][i], metric)
                curves[metric][name] = c.tolist()
                ause[metric][name] = _trapezoid(c - oracle[metric], f) if n else float("nan")
        return {
            "count": int(n),
            "fractions": f.tolist(),
            "curves": curves,
            "oracle": {m: v.tolist() for m, v in oracle.items()},
            "ause": ause,
        }


class DepthNLL(StreamingMetric):
    """Negative log-likelihood and interval coverage of a per-pixel predictive distribution.

    ``DepthNLL(dist="gaussian"|"laplace", levels=(0.5, 0.9, 0.95), min_depth=None,
    max_depth=None)``; ``update(mean, var, target, valid)``, (B, H, W) each, var the total
    predictive variance (floored at 1e-12). Gaussian: N(mean, var), central interval
    mean +- sqrt(2) erfinv(p) sigma (MC dropout's mixture is treated as one Gaussian of the
    same variance). Laplace: b = sqrt(var / 2), interval mean +- b ln(1 / (1 - p)).
    ``compute()`` -> {"dist", "nll" (nats per pixel), "levels", "coverage" (share of pixels
    inside each interval, list aligned with levels), "coverage_error" (mean |coverage - level|),
    "count"}. A calibrated model has coverage == levels.
    """

    VAR_FLOOR = 1e-12

    def __init__(
        self,
        dist: str = "gaussian",
        levels: Sequence[float] = (0.5, 0.9, 0.95),
        min_depth: float | None = None,
        max_depth: float | None = None,
    ) -> None:
        if dist not in ("gaussian", "laplace"):
            raise ValueError(f"dist must be 'gaussian' or 'laplace', got {dist!r}")
        self.levels = [float(p) for p in levels]
        if any(not 0 < p < 1 for p in self.levels):
            raise ValueError(f"interval levels must lie in (0, 1), got {self.levels}")
        super().__init__({"dist": dist, "levels": self.levels, "depth": [min_depth, max_depth]})
        self.dist, self.min_depth, self.max_depth = dist, min_depth, max_depth
        self._add_state("count", (), torch.int64)
        self._add_state("nll_sum", (), torch.float64)
        self._add_state("inside", (len(self.levels),), torch.int64)

    def half_widths(self, var: torch.Tensor) -> torch.Tensor:
        """(L, N) half-widths of the central intervals for variances var (N,)."""
        lv = torch.tensor(self.levels, dtype=torch.float64, device=var.device).unsqueeze(1)
        if self.dist == "gaussian":
            return math.sqrt(2.0) * torch.erfinv(lv) * var.sqrt()
        return -torch.log1p(-lv) * (var / 2).sqrt()

    @torch.no_grad()
    def update(self, mean, var, target, valid) -> None:
        self._follow(mean)
        m, t, _, v = depth_pixels(
            mean,
            target.to(mean.device),
            _dev(valid, mean),
            self.min_depth,
            self.max_depth,
            clamp=False,
            extra=[var.to(mean.device)],
        )
        check_finite("predictive variance", v)
        v = v.clamp_min(self.VAR_FLOOR)
        r = (t - m).abs()
        if self.dist == "gaussian":
            nll = 0.5 * torch.log(2 * math.pi * v) + r.square() / (2 * v)
        else:
            b = (v / 2).sqrt()
            nll = torch.log(2 * b) + r / b
        self.state["count"] += r.numel()
        self.state["nll_sum"] += nll.sum()
        self.state["inside"] += (r.unsqueeze(0) <= self.half_widths(v)).sum(dim=1)

    def compute(self) -> dict:
        n = int(self.state["count"])
        cov = (
            (self.state["inside"].cpu().double() / n).tolist()
            if n
            else [float("nan")] * len(self.levels)
        )
        err = float(np.mean(np.abs(np.asarray(cov) - np.asarray(self.levels))))
        return {
            "dist": self.dist,
            "nll": float(self.state["nll_sum"]) / n if n else float("nan"),
            "levels": list(self.levels),
            "coverage": cov,
            "coverage_error": err,
            "count": n,
        }


IntervalCalibration = DepthNLL  # the brief's other name for the same metric
