"""Evaluate a checkpoint over a whole split with MC dropout; write metrics, tables and figures.

:func:`evaluate_checkpoint` streams every image of ``loader`` once through an
:class:`~seguncert.uncertainty.sampler.MCSampler` (predictions cropped back to ``orig_size``, so
eval padding never counts) into the streaming metric sets of :mod:`.segmentation` and
:mod:`.depth` (fixed-size histograms: memory does not grow with the split), then
:mod:`.report` writes the files. It changes nothing in the checkpoint: fitting a calibrator
is :mod:`.calibration`'s job, and the caller passes the one to apply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..data.common import IGNORE_INDEX, DatasetMeta
from ..data.transforms import denormalize, image_sizes
from ..errors import DataError
from ..losses.concrete import learned_rates
from ..metrics.novelty import NoveltyMetrics
from ..models.base import has_active_dropout
from ..runtime.progress import Progress
from ..tasks import checkpoint_task
from ..uncertainty.ensemble import EnsembleSampler
from ..uncertainty.feature_density import NoveltyScorer, load_density, novelty_rank_scale
from ..uncertainty.sampler import MCSampler
from ..viz.overlays import colorize_labels
from . import report
from .depth import DepthEval, DepthExamples
from .segmentation import SegmentationEval


@dataclass
class EvalConfig:
    """How an evaluation samples and reports."""

    mc_samples: int = 20
    noise_samples: int = 0  # logit-noise draws per dropout sample (heteroscedastic heads)
    n_bins: int = 15
    examples: int = 4
    memory_budget_mb: float = 1024.0
    seed: int = 0
    split: str = "val"
    progress: bool = True


def describe(calibrator) -> str:
    if isinstance(calibrator, list):
        return "; ".join(describe(c) for c in calibrator)
    return calibrator.describe() if calibrator is not None else "none"


def _crop(t: torch.Tensor, i: int, h: int, w: int) -> torch.Tensor:
    return t[i : i + 1, ..., :h, :w]


def _segmentation_example(image, o, label, meta, name) -> dict:
    pred = o["pred"][0].cpu().numpy()
    lab = label[0].cpu().numpy()
    return {
        "image": denormalize(image, meta.mean, meta.std),
        "pred": colorize_labels(pred, meta.palette),
        "error": (pred != lab) & (lab != IGNORE_INDEX),
        "valid": lab != IGNORE_INDEX,
        "aleatoric": o["aleatoric"][0].float().cpu().numpy(),
        "epistemic": o["epistemic"][0].float().cpu().numpy(),
        "name": name,
    }


NOVELTY_MAPS = ("entropy", "aleatoric", "epistemic", "prob_var", "epistemic_members")
# Deterministic maps (NoveltyScorer): unbounded, so ranked on sign(u) log(1 + |u|).
DETERMINISTIC_MAPS = ("feature_density", "max_logit", "energy")


class SplitEval:
    """The metric sets of one checkpoint's task, fed one cropped image at a time."""

    def __init__(self, task, meta: DatasetMeta, spec: dict, cfg: EvalConfig, members: int = 1):
        self.task, self.meta, self.cfg = task, meta, cfg
        c = len(meta.class_names)
        hetero = bool(spec.get("heteroscedastic"))
        extra = ("noise_aleatoric",) if hetero and cfg.noise_samples > 0 else ()
        extra += ("epistemic_members", "epistemic_dropout") if members > 1 else ()
        self.seg = SegmentationEval(c, cfg.n_bins, hetero, extra) if task.segmentation else None
        self.depth = DepthEval(meta, spec.get("depth_dist")) if task.depth else None
        self.seg_rows, self.depth_examples = [], DepthExamples(cfg.examples, meta)
        self.novelty = None  # created when the frames carry an "ood" mask
        self.images = 0

    def update(self, image, o: dict, batch: dict, i: int, h: int, w: int) -> None:
        name = str(batch["name"][i]) if "name" in batch else f"#{self.images}"
        if self.seg is not None:
            label = _crop(batch["label"], i, h, w)
            self.seg.update(o, label)
            if len(self.seg_rows) < self.cfg.examples:
                self.seg_rows.append(_segmentation_example(image, o, label, self.meta, name))
            if "ood" in batch:
                self._novelty(o, _crop(batch["ood"], i, h, w), label)
        if self.depth is not None:
            d = self.task.depth_maps(o)
            target = _crop(batch["depth"], i, h, w).to(d["depth"].device)
            valid = _crop(batch["depth_valid"], i, h, w).to(d["depth"].device)
            self.depth.update(d, target, valid)
            if self.depth_examples.want():
                self.depth_examples.add(image, d, target, valid, name)
        self.images += 1

    def _novelty(self, o: dict, ood, label) -> None:
        """OOD pixels vs labelled in-distribution pixels, for every map and max probability."""
        maps = {"max_prob": 1.0 - o["probs"].max(1).values}
        maps.update({k: o[k] for k in (*NOVELTY_MAPS, *DETERMINISTIC_MAPS) if k in o})
        if self.novelty is None:
            log_c = math.log(len(self.meta.class_names))
            ranges = {"max_prob": (0.0, 1.0), "prob_var": (0.0, 0.25)}
            nats = ("entropy", "aleatoric", "epistemic", "epistemic_members")
            ranges.update({k: (0.0, log_c) for k in nats})
            self.novelty = NoveltyMetrics(list(maps), ranges=ranges)
            self.novelty_sums = {k: [0.0, 0.0] for k in maps}  # map sums on OOD, ID pixels
            self.novelty_counts = [0, 0]
        device = maps["max_prob"].device
        ood, ind = ood.to(device), (label != 255).to(device)
        ranked = {
            k: novelty_rank_scale(v) if k in DETERMINISTIC_MAPS else v for k, v in maps.items()
        }
        self.novelty.update(ranked, ood, ind)
        ind = ind & ~ood
        self.novelty_counts[0] += int(ood.sum())
        self.novelty_counts[1] += int(ind.sum())
        for k, v in maps.items():
            self.novelty_sums[k][0] += float(v[ood].double().sum())
            self.novelty_sums[k][1] += float(v[ind].double().sum())

    def compute(self) -> tuple[dict, list[dict]]:
        metrics, rows = {}, []
        if self.seg is not None:
            metrics, rows = self.seg.compute(self.meta.class_names)
        if self.novelty is not None:
            nov = self.novelty.compute()
            n_ood, n_id = (max(c, 1) for c in self.novelty_counts)
            table = [
                {
                    "map": k,
                    "auroc": v["auroc"],
                    "ap": v["ap"],
                    "fpr95": v["fpr95"],
                    "mean_ood": self.novelty_sums[k][0] / n_ood,
                    "mean_id": self.novelty_sums[k][1] / n_id,
                }
                for k, v in nov["maps"].items()
            ]
            metrics["novelty"] = {**{k: v for k, v in nov.items() if k != "maps"}, "table": table}
        if self.depth is not None:
            metrics["depth"] = self.depth.compute()
            metrics.setdefault("num_pixels", metrics["depth"]["count"])
        return metrics, rows


def stream_split(sampler, loader, evals: SplitEval, device, cfg: EvalConfig, novelty=None) -> None:
    """Every image of ``loader`` once through ``sampler`` into ``evals``; batches with an
    ``ood`` mask also get the deterministic maps of ``novelty`` (a NoveltyScorer), if given."""
    total = len(loader.dataset) if hasattr(loader, "dataset") else None
    with Progress(total, f"evaluate {cfg.split}", unit="img", enabled=cfg.progress) as bar:
        for batch in loader:
            x = batch["image"].to(device, non_blocking=True)
            out = sampler(x)
            if novelty is not None and "ood" in batch:
                out.update(novelty(x))
            for i, (h, w) in enumerate(image_sizes(batch)):
                o = {k: _crop(v, i, h, w) for k, v in out.items() if v.dim() >= 3}
                evals.update(x[i, :, :h, :w], o, batch, i, h, w)
                bar.update(1, images=1)


def make_sampler(models, cfg: EvalConfig, calibrator=None):
    """An MCSampler for one model, an EnsembleSampler (T samples per member) for several;
    ``calibrator`` is one calibrator for all, or a list with one per member."""
    models = list(models) if isinstance(models, (list, tuple)) else [models]
    opts = {
        "memory_budget_mb": cfg.memory_budget_mb,
        "seed": cfg.seed,
        "noise_samples": cfg.noise_samples,
    }
    if len(models) == 1:
        cal = calibrator[0] if isinstance(calibrator, list) else calibrator
        return MCSampler(models[0], cfg.mc_samples, calibrator=cal, **opts)
    cals = calibrator if isinstance(calibrator, list) else [calibrator] * len(models)
    return EnsembleSampler(models, cfg.mc_samples, calibrators=cals, **opts)


def evaluate_checkpoint(
    model, info: dict, loader, out_dir, cfg=None, calibrator=None, extra: dict | None = None
) -> dict:
    """Evaluate ``model`` (from ``load_checkpoint``; ``info`` is its sidecar dict) on every image
    of ``loader``; write the report into ``out_dir``; return the metrics (= metrics.json, NaN
    there as null). ``calibrator`` (see :mod:`seguncert.uncertainty.calibrators`) acts on every
    MC sample's logits; None evaluates the raw model. ``extra`` sections (shift study,
    calibration fit) are added to metrics.json and the HTML report. ``model`` may be a list of
    ensemble members (T samples each; ``calibrator`` then one per member or shared)."""
    cfg = cfg or EvalConfig()
    members = list(model) if isinstance(model, (list, tuple)) else [model]
    model = members[0]
    device = next(model.parameters()).device
    task = checkpoint_task(info)
    meta = DatasetMeta.from_dict(info.get("meta") or {})
    spec = getattr(model, "spec", None) or info.get("model_spec") or {}
    sampler = make_sampler(members, cfg, calibrator)
    evals = SplitEval(task, meta, spec, cfg, len(members))
    for m in members:
        m.eval()
    # One model: max-logit / energy baselines, plus the feature density when it was fitted.
    novelty = NoveltyScorer(model, load_density(info)) if len(members) == 1 else None
    stream_split(sampler, loader, evals, device, cfg, novelty if task.segmentation else None)
    if evals.images == 0:
        raise DataError(f"split {cfg.split!r} has no images to evaluate")
    metrics: dict = {
        "task": task.name,
        "split": cfg.split,
        "num_images": evals.images,
        "mc_samples": int(cfg.mc_samples),
        "mc_samples_run": int(cfg.mc_samples) if has_active_dropout(model) else 1,
        "members": len(members),
        "noise_samples": int(cfg.noise_samples),
        "n_bins": int(cfg.n_bins),
        "calibration": describe(calibrator),
        "checkpoint": info.get("sidecar_path"),
    }
    rates = learned_rates(model)
    if rates:  # Concrete dropout: the rates the sampler used
        metrics["concrete_dropout_rates"] = rates
    task_metrics, rows = evals.compute()
    metrics.update(task_metrics)
    metrics.update(extra or {})
    report.write_report(metrics, rows, meta, out_dir, evals.seg_rows, evals.depth_examples.rows)
    return metrics
