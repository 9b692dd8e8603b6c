"""Calibration under shift: every calibrator on the same frames, clean and corrupted (CamVid-C).

The network runs once per frame (its T MC samples' logits, ``return_logits``); every
calibrator is then applied to those logits (the noise draws included), so a comparison of K
calibrators costs one MC pass per frame, not K. Per (corruption, severity, calibrator):
mIoU (argmax of the calibrated predictive), ECE, mean class-wise ECE, NLL, and the error AUROC
of total / aleatoric / epistemic entropy. Corruptions are applied on the fly, deterministic in
(seed, corruption, severity, frame index) (:func:`seguncert.data.corruptions.corrupt`).
"""

from __future__ import annotations

import math

import torch

from ..data.corruptions import corrupt
from ..metrics.calibration import CalibrationMetrics
from ..metrics.quality import UncertaintyQuality
from ..metrics.segmentation import ConfusionMatrix
from ..runtime.progress import Progress
from ..uncertainty.calibrator_fit import mc_predictive
from ..uncertainty.maps import predictive_entropy
from ..uncertainty.sampler import MCSampler

MAPS = ("entropy", "aleatoric", "epistemic")


class CorruptedFrames(torch.utils.data.Dataset):
    """A raw frame dataset with ``corruption`` at ``severity`` on every image (labels kept);
    ``severity`` 0 or corruption "clean" is the clean frame."""

    def __init__(self, raw, corruption: str, severity: int, seed: int = 0, transform=None):
        self.raw, self.corruption, self.severity, self.seed = raw, corruption, severity, seed
        self.transform = transform

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, i: int) -> dict:
        s = dict(self.raw[i])
        if self.corruption != "clean" and self.severity > 0:
            s["image"] = corrupt(s["image"], self.corruption, self.severity, self.seed, i)
        return self.transform(s) if self.transform is not None else s


class CalibratorScore:
    """The metric set of one calibrator."""

    def __init__(self, num_classes: int, n_bins: int) -> None:
        log_c = math.log(num_classes)
        self.cm = ConfusionMatrix(num_classes)
        self.cal = CalibrationMetrics(num_classes, n_bins=n_bins)
        self.quality = UncertaintyQuality(
            list(MAPS), n_bins=2048, ranges=dict.fromkeys(MAPS, (0.0, log_c))
        )

    def update(self, p_t: torch.Tensor, label: torch.Tensor) -> None:
        """p_t (T, 1, C, H, W) calibrated per-sample predictives; label (1, H, W)."""
        p = p_t.mean(0)
        pred = p.argmax(1)
        total = predictive_entropy(p)
        aleatoric = torch.stack([predictive_entropy(q) for q in p_t]).mean(0)
        maps = {
            "entropy": total,
            "aleatoric": aleatoric,
            "epistemic": (total - aleatoric).clamp_min(0.0),
        }
        valid = label != 255
        self.cm.update(pred, label)
        self.cal.update(p, label)
        self.quality.update(maps, (pred == label) & valid, valid)

    def compute(self) -> dict:
        cm, cal, q = self.cm.compute(), self.cal.compute(), self.quality.compute()
        out = {
            "miou": cm["miou"],
            "ece": cal["ece"],
            "mean_classwise_ece": cal["mean_classwise_ece"],
            "max_classwise_ece": max(cal["classwise_ece"]),
            "nll": cal["nll"],
            "classwise_ece": cal["classwise_ece"],
        }
        out.update({f"auroc_{k}": v["auroc"] for k, v in q["maps"].items()})
        return out


def calibrated_samples(cal, logits, log_var, noise_samples: int, seed: int) -> torch.Tensor:
    """(T, B, C, H, W) per-dropout-sample predictives p_t = mean_s softmax(cal(f_t + σ ε_s))."""
    return torch.stack(
        [
            mc_predictive(
                cal,
                logits[t : t + 1],
                None if log_var is None else log_var[t : t + 1],
                noise_samples,
                seed,
            )
            for t in range(logits.shape[0])
        ]
    )


@torch.inference_mode()
def score_calibrators(model, dataset, calibrators: dict, cfg, desc: str = "frames") -> dict:
    """{calibrator name: metrics} over every frame of ``dataset`` (transformed samples)."""
    device = next(model.parameters()).device
    sampler = MCSampler(
        model, cfg.mc_samples, cfg.memory_budget_mb, seed=cfg.seed, return_logits=True
    )
    classes = next(iter(calibrators.values())).num_classes
    scores = {name: CalibratorScore(classes, cfg.n_bins) for name in calibrators}
    with Progress(len(dataset), desc, unit="img", enabled=cfg.progress) as bar:
        for i in range(len(dataset)):
            s = dataset[i]
            h, w = (int(v) for v in s["orig_size"])
            out = sampler(s["image"][None].to(device))
            z = out["logits"][..., :h, :w]
            lv = out.get("logit_log_var")
            lv = None if lv is None else lv[..., :h, :w]
            label = s["label"][None, :h, :w].to(device)
            for name, cal in calibrators.items():
                p_t = calibrated_samples(cal, z, lv, cfg.noise_samples, cfg.seed)
                scores[name].update(p_t, label)
            bar.update(1, images=1)
    return {name: sc.compute() for name, sc in scores.items()}


def shift_study(model, make_frames, calibrators, cfg, corruptions, severities) -> list[dict]:
    """Rows of (corruption, severity, calibrator, metrics) for the clean frames and every
    corruption x severity; ``make_frames(corruption, severity)`` gives the transformed frames
    (e.g. a split wrapped in :class:`CorruptedFrames`)."""
    rows = []
    settings = [("clean", 0)] + [(c, s) for c in corruptions for s in severities]
    for name, severity in settings:
        frames = make_frames(name, severity)
        res = score_calibrators(model, frames, calibrators, cfg, f"{name} {severity}")
        for cal_name, m in res.items():
            metrics = {k: v for k, v in m.items() if k != "classwise_ece"}
            rows.append(
                {"corruption": name, "severity": severity, "calibrator": cal_name, **metrics}
            )
    return rows


def summarise(rows: list[dict], severity: int = 3) -> list[dict]:
    """Per calibrator: clean metrics, the mean over corruptions at ``severity`` and the ratio of
    shifted to clean ECE."""
    out = []
    for cal in dict.fromkeys(r["calibrator"] for r in rows):
        clean = next(r for r in rows if r["calibrator"] == cal and r["corruption"] == "clean")
        shifted = [r for r in rows if r["calibrator"] == cal and r["severity"] == severity]
        row = {"calibrator": cal}
        for key in ("miou", "ece", "mean_classwise_ece", "nll", "auroc_aleatoric"):
            row[f"clean_{key}"] = clean[key]
            if shifted:
                row[f"s{severity}_{key}"] = sum(r[key] for r in shifted) / len(shifted)
        if shifted:
            row["ece_ratio"] = row[f"s{severity}_ece"] / max(clean["ece"], 1e-12)
        out.append(row)
    return out
