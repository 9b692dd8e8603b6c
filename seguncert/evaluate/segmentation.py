"""The segmentation metric set :func:`~seguncert.evaluate.run.evaluate_checkpoint` feeds.

Each set wraps the streaming metrics of :mod:`seguncert.metrics` (fixed-size histograms) plus a
few per-class sums for the calibration table, takes one image's sampler maps cropped to its
original size, and turns everything into the JSON-able sections of metrics.json.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..data.common import IGNORE_INDEX
from ..metrics.calibration import CalibrationMetrics
from ..metrics.quality import PAvPU, UncertaintyQuality
from ..metrics.segmentation import ConfusionMatrix

SEG_MAPS = ("entropy", "aleatoric", "epistemic", "prob_var")
# Maps some samplers add (nats): the learned noise's share of the aleatoric entropy (S > 0) and
# the split of the epistemic part between ensemble members and dropout samples.
EXTRA_MAPS = ("noise_aleatoric", "epistemic_members", "epistemic_dropout")
PAVPU_DEFAULT_MAP = "epistemic"
PAVPU_STEPS = 2048
PAVPU_ZOOM = 256
SWEEP_POINTS = 128  # the PAvPU sweep in metrics.json is subsampled to about this many points
QUALITY_KEYS = ("auroc", "aupr", "aurc", "eaurc")
SWEEP_KEYS = (
    "threshold",
    "certain_fraction",
    "pavpu",
    "p_accurate_given_certain",
    "p_uncertain_given_inaccurate",
)


def seg_ranges(num_classes: int) -> dict:
    """Linear ranges of the bounded maps, for PAvPU thresholds in the maps' own units (the
    learned logit variance is unbounded: None, squashed by the metric)."""
    log_c = math.log(num_classes)
    nats = ("entropy", "aleatoric", "epistemic", *EXTRA_MAPS)
    return {**dict.fromkeys(nats, (0.0, log_c)), "prob_var": (0.0, 0.25)}  # var <= 1/4


EPS = 1e-10  # smallest distance from a bound that the ranking histograms resolve
UNBOUNDED_LOG_RANGE = (-10.0, 6.0)  # log10 range for the learned logit variance


def rank_transform(u: torch.Tensor, hi: float | None) -> torch.Tensor:
    """A monotonic stretch of an uncertainty map for the ranking histograms: AUROC / AUPR /
    AURC and the precision curves depend only on the pixels' order, which it keeps, while
    fixed-width bins then resolve every decade near both ends. Bounded maps in [0, hi]:
    log10(u + eps) - log10(hi - u + eps) (a confident model's MI is often < 1e-3 nats; a
    near-uniform model's entropy sits just below log C); unbounded ones: log10(u + eps). Linear
    bins over [0, log C] would tie either end into one bin."""
    u = u.double().clamp_min(0.0)
    t = torch.log10(u + EPS)
    if hi is not None:
        t = t - torch.log10((hi - u).clamp_min(0.0) + EPS)
    return t


def rank_ranges(num_classes: int, names) -> dict:
    """(lo, hi) of the stretched maps, and the bound each map is stretched against."""
    lin = seg_ranges(num_classes)
    out = {}
    for n in names:
        if n in lin:
            top = math.log10(lin[n][1] + EPS)
            out[n] = (math.log10(EPS) - top, top - math.log10(EPS))
        else:
            out[n] = UNBOUNDED_LOG_RANGE
    return out


def label_boundaries(label: torch.Tensor) -> torch.Tensor:
    """label (B, H, W) int -> bool (B, H, W): pixels whose 3x3 neighbourhood holds another label
    (void included), i.e. a band about 2 px wide along every object boundary."""
    x = label.float().unsqueeze(1)
    hi = torch.nn.functional.max_pool2d(x, 3, 1, 1)
    lo = -torch.nn.functional.max_pool2d(-x, 3, 1, 1)
    return (hi != lo)[:, 0]


class SegmentationEval:
    """Confusion matrix, calibration, error detection (AUROC/AUPR/AURC, precision curves),
    PAvPU and per-class table sums over every labelled pixel of a split."""

    def __init__(
        self, num_classes: int, n_bins: int, heteroscedastic: bool, extra: tuple = ()
    ) -> None:
        c = self.num_classes = num_classes
        self.maps = SEG_MAPS + (("logit_var",) if heteroscedastic else ()) + tuple(extra)
        ranks = rank_ranges(c, self.maps)
        self.bounds = {k: hi for k, (_, hi) in seg_ranges(c).items()}
        self.cm = ConfusionMatrix(c)
        self.cal = CalibrationMetrics(c, n_bins=n_bins)
        self.quality = UncertaintyQuality(self.maps, n_bins=4096, ranges=ranks)
        # PAvPU thresholds are in map units on linear bins (the patch mean is not rank-based).
        # A second, zoomed instance over the bottom 1/ZOOM of each range resolves the small
        # mean uncertainty of a confident model (mean MI ~1e-3 nats would snap to 0 otherwise).
        lin = seg_ranges(c)
        self.pavpu = PAvPU(self.maps, n_thresholds=PAVPU_STEPS, ranges=lin)
        self.zoom_hi = {k: lo_hi[1] / PAVPU_ZOOM for k, lo_hi in lin.items()}
        zoomed = {k: (0.0, hi) for k, hi in self.zoom_hi.items()}
        self.pavpu_zoom = PAvPU(self.maps, n_thresholds=PAVPU_STEPS, ranges=zoomed)
        # MI error detection among the pixels of each true class (coarse histograms are enough).
        self.class_quality = [
            UncertaintyQuality(["epistemic"], n_bins=512, ranges=ranks, percentiles=[0])
            for _ in range(c)
        ]
        self.map_sum = torch.zeros(len(self.maps), dtype=torch.float64)
        self.prob_sum = torch.zeros(c, dtype=torch.float64)  # sum of p_c over labelled pixels
        self.pred_conf_sum = torch.zeros(c, dtype=torch.float64)  # top confidence, by prediction
        # Where the uncertainty sits: map sums by true class, and on label boundaries vs inside.
        self.class_map_sum = torch.zeros(c, len(self.maps), dtype=torch.float64)
        self.region_sum = torch.zeros(2, len(self.maps), dtype=torch.float64)  # boundary, inside
        self.region_count = torch.zeros(2, dtype=torch.float64)

    @torch.no_grad()
    def update(self, out: dict, label: torch.Tensor) -> None:
        """out: sampler maps of one image, (1, C, H, W) / (1, H, W); label (1, H, W)."""
        probs, pred = out["probs"], out["pred"]
        label = label.to(pred.device)
        valid = label != IGNORE_INDEX
        correct = (pred == label) & valid
        self.cm.update(pred, label)
        self.cal.update(probs, label)
        maps = {k: out[k].float() for k in self.maps}
        ranked = {k: rank_transform(v, self.bounds.get(k)) for k, v in maps.items()}
        self.quality.update(ranked, correct, valid)
        self.pavpu.update(maps, correct, valid)
        self.pavpu_zoom.update(maps, correct, valid)
        for c, q in enumerate(self.class_quality):
            m = valid & (label == c)
            if bool(m.any()):
                q.update({"epistemic": ranked["epistemic"]}, correct, m)
        stacked = torch.stack([maps[k][valid].double() for k in self.maps], 1).cpu()  # (P, M)
        self.map_sum += stacked.sum(0)
        self.class_map_sum.index_add_(0, label[valid].cpu(), stacked)
        edge = label_boundaries(label)[valid].cpu()
        self.region_sum[0] += stacked[edge].sum(0)
        self.region_sum[1] += stacked[~edge].sum(0)
        self.region_count += torch.stack([edge.sum(), (~edge).sum()]).double()
        p = probs.permute(1, 0, 2, 3)[:, valid].double()  # (C, P)
        self.prob_sum += p.sum(1).cpu()
        self.pred_conf_sum += torch.bincount(
            pred[valid].cpu(), weights=p.max(0).values.cpu(), minlength=self.num_classes
        )

    def _pavpu(self, count: int) -> dict:
        """PAvPU at the default threshold (each map's mean over labelled pixels: a data-free
        rule, unlike the optimistic best-of-sweep, also reported) and the epistemic sweep."""
        means = {k: float(s) / max(count, 1) for k, s in zip(self.maps, self.map_sum, strict=True)}
        res = self.pavpu.compute(threshold=means)
        zoom = self.pavpu_zoom.compute(threshold=means)
        per_map = {}
        for k, r in res.items():
            fine = k in self.zoom_hi and means[k] < self.zoom_hi[k]
            at, best = (zoom[k] if fine else r)["at_threshold"] or {}, r["best"] or {}
            per_map[k] = {
                "value": at.get("pavpu", float("nan")),
                "threshold": at.get("threshold", float("nan")),
                "p_accurate_given_certain": at.get("p_accurate_given_certain", float("nan")),
                "p_uncertain_given_inaccurate": at.get(
                    "p_uncertain_given_inaccurate", float("nan")
                ),
                "best": {key: best.get(key, float("nan")) for key in SWEEP_KEYS},
                "patches": r["patches"],
            }
        main = per_map[PAVPU_DEFAULT_MAP]
        sweep = res[PAVPU_DEFAULT_MAP]["sweep"]
        return {
            **{k: v for k, v in main.items()},
            "map": PAVPU_DEFAULT_MAP,
            "threshold_rule": "mean of the map over labelled pixels",
            "patch_size": self.pavpu.patch_size,
            "sweep": {
                key: sweep[key][:: max(1, len(sweep[key]) // SWEEP_POINTS)] for key in SWEEP_KEYS
            },
            "maps": per_map,
        }

    def _rows(self, cm: dict, cal: dict, names: list[str]) -> list[dict]:
        """One per-class table row per class."""
        total = cm["count"]
        conf = np.asarray(cm["confusion"], dtype=np.float64)
        predicted = conf.sum(0)
        nan = float("nan")
        rows = []
        for c, name in enumerate(names):
            mi = self.class_quality[c].compute()["maps"]["epistemic"]
            has_pred, support = predicted[c] > 0, cm["support"][c]
            means = {
                f"mean_{k}": float(self.class_map_sum[c, i]) / support if support else nan
                for i, k in enumerate(self.maps)
            }
            rows.append(
                {
                    "class": name,
                    "support": support,
                    "pixel_share": support / total if total else nan,
                    "iou": cm["per_class_iou"][c],
                    "accuracy": cm["per_class_accuracy"][c],
                    "precision": conf[c, c] / predicted[c] if has_pred else nan,
                    "mean_confidence": (
                        float(self.pred_conf_sum[c]) / predicted[c] if has_pred else nan
                    ),
                    "mean_prob": float(self.prob_sum[c]) / total if total else nan,
                    "classwise_ece": cal["classwise_ece"][c],
                    "mi_auroc": mi["auroc"],
                    **means,
                }
            )
        return rows

    def _regions(self, total: int) -> dict:
        out = {}
        for j, region in enumerate(("boundary", "interior")):
            n = float(self.region_count[j])
            out[region] = {"share": n / total if total else float("nan")}
            for i, k in enumerate(self.maps):
                out[region][k] = float(self.region_sum[j, i]) / n if n else float("nan")
        return out

    def compute(self, class_names) -> tuple[dict, list[dict]]:
        """(metrics.json segmentation section, per-class table rows)."""
        cm, cal, q = self.cm.compute(), self.cal.compute(), self.quality.compute()
        names = list(class_names)
        total = cm["count"]
        rows = self._rows(cm, cal, names)
        unc = {}
        for i, (k, v) in enumerate(q["maps"].items()):
            unc[k] = {m: v[m] for m in QUALITY_KEYS}
            unc[k]["mean"] = float(self.map_sum[i]) / total if total else float("nan")

        def by_class(values):
            return dict(zip(names, values, strict=True))

        metrics = {
            "miou": cm["miou"],
            "per_class_iou": by_class(cm["per_class_iou"]),
            "pixel_accuracy": cm["pixel_accuracy"],
            "class_accuracy": cm["class_accuracy"],
            "per_class_accuracy": by_class(cm["per_class_accuracy"]),
            "ece": cal["ece"],
            "mce": cal["mce"],
            "classwise_ece": by_class(cal["classwise_ece"]),
            "mean_classwise_ece": cal["mean_classwise_ece"],
            "nll": cal["nll"],
            "brier": cal["brier"],
            "pavpu": self._pavpu(total),
            "uncertainty": unc,
            "uncertainty_by_class": {
                r["class"]: {k: r[f"mean_{k}"] for k in self.maps} for r in rows
            },
            "uncertainty_by_region": self._regions(total),
            "error_rate": q["error_rate"],
            "precision_curves": {k: v["precision_curve"] for k, v in q["maps"].items()},
            "reliability": cal["reliability"],
            "classwise_reliability": cal["classwise_reliability"],
            "confusion": cm["confusion"],
            "num_pixels": total,
        }
        return metrics, rows
