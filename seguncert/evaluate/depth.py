"""The depth part of an evaluation: errors, sparsification / AUSE, NLL and interval coverage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data.transforms import denormalize
from ..metrics.depth import DepthMetrics, DepthNLL, Sparsification
from ..viz import plots
from ..viz.overlays import heatmap

DEPTH_KEYS = ("depth", "aleatoric_var", "epistemic_var", "total_var")


def depth_maps(out: dict, joint: bool) -> dict:
    """The sampler's depth maps under their depth-only names (joint models prefix them)."""
    if not joint:
        return {k: out[k] for k in DEPTH_KEYS}
    return {k: out["depth" if k == "depth" else f"depth_{k}"] for k in DEPTH_KEYS}


class DepthEval:
    """DepthMetrics + Sparsification (aleatoric / epistemic / total variance vs the oracle)
    + DepthNLL (NLL and 50/90/95% interval coverage of the total predictive variance)."""

    def __init__(self, meta, depth_dist: str | None) -> None:
        lo, hi = float(meta.min_depth), float(meta.max_depth)
        # An L1 head learns no aleatoric variance (it is 0): rank only the maps that exist.
        self.maps = (
            ("epistemic", "total") if depth_dist == "l1" else ("aleatoric", "epistemic", "total")
        )
        self.metrics = DepthMetrics(lo, hi)
        self.sparse = Sparsification(self.maps, min_depth=lo, max_depth=hi)
        dist = "laplace" if depth_dist == "laplace" else "gaussian"
        self.nll = DepthNLL(dist, min_depth=lo, max_depth=hi)
        self.sigma_sum = dict.fromkeys(("aleatoric", "epistemic", "total"), 0.0)
        self.pixels = 0

    @torch.no_grad()
    def update(self, d: dict, target: torch.Tensor, valid: torch.Tensor) -> None:
        pred = d["depth"]
        self.metrics.update(pred, target, valid)
        ok = valid.bool() & (target > 0)
        self.pixels += int(ok.sum())
        for m in self.sigma_sum:
            self.sigma_sum[m] += float(d[f"{m}_var"][ok].double().clamp_min(0).sqrt().sum())
        self.sparse.update(pred, target, valid, {m: d[f"{m}_var"] for m in self.maps})
        self.nll.update(pred, d["total_var"], target, valid)

    def compute(self) -> dict:
        out = self.metrics.compute()
        sp, nll = self.sparse.compute(), self.nll.compute()
        out["ause_rmse"] = sp["ause"]["rmse"].get("total", float("nan"))
        out["ause_absrel"] = sp["ause"]["abs_rel"].get("total", float("nan"))
        out["ause"] = sp["ause"]
        out["nll"] = nll["nll"]
        out["nll_dist"] = nll["dist"]
        for level, cov in zip(nll["levels"], nll["coverage"], strict=True):
            out[f"coverage_{round(100 * level)}"] = cov
        out["coverage_error"] = nll["coverage_error"]
        for m, total in self.sigma_sum.items():  # mean predicted standard deviations (m)
            out[f"mean_{m}_std"] = total / max(self.pixels, 1)
        out["sparsification"] = {k: sp[k] for k in ("fractions", "curves", "oracle")}
        return out


class DepthExamples:
    """First ``n`` images: input, fused depth, |error|, aleatoric and epistemic σ (metres)."""

    def __init__(self, n: int, meta) -> None:
        self.n, self.meta, self.rows = n, meta, []

    def want(self) -> bool:
        return len(self.rows) < self.n

    def add(self, image, d: dict, target, valid, name: str) -> None:
        pred = d["depth"][0].float().cpu().numpy()
        t = target[0].float().cpu().numpy()
        ok = valid[0].cpu().numpy()
        err = np.where(ok, np.abs(pred - t), np.nan)
        self.rows.append(
            {
                "image": denormalize(image, self.meta.mean, self.meta.std),
                "pred": heatmap(pred, self.meta.min_depth, self.meta.max_depth, "turbo_r"),
                "error": err,
                "valid": ok,
                "aleatoric": d["aleatoric_var"][0].float().sqrt().cpu().numpy(),
                "epistemic": d["epistemic_var"][0].float().sqrt().cpu().numpy(),
                "name": name,
            }
        )


def write_depth_figures(depth: dict, out: Path) -> list[Path]:
    sp = depth["sparsification"]
    f = sp["fractions"]
    curves = {m: {k: (f, v) for k, v in c.items()} for m, c in sp["curves"].items()}
    oracle = {m: (f, v) for m, v in sp["oracle"].items()}
    return [
        plots.sparsification_plot(curves, oracle, out / "sparsification.png", ause=depth["ause"])
    ]
