"""Evaluate a checkpoint over a whole split with MC dropout; write metrics, tables and figures.

:func:`evaluate_checkpoint` streams every image of ``loader`` once through :class:`MCSampler`
(predictions are cropped back to ``orig_size``, so eval padding never counts) into the
streaming metrics of :mod:`seguncert.metrics` (fixed-size histograms: memory does not grow with
the split). Segmentation checkpoints get :class:`~.eval_metrics.SegmentationEval`, depth ones
:class:`~.eval_depth.DepthEval`, joint ones both. :mod:`.eval_report` writes the files.

Temperature scaling (Guo et al. 2017). ``fit_temperature=True`` first fits T* on the split by
minimising the NLL of the **deterministic** logits (model in eval mode, MC dropout off: the
paper-standard choice, and one cheap forward per image per Newton pass), stores it in the
checkpoint sidecar (``temperature``) and reports ECE / NLL of those deterministic predictions
before and after scaling. The MC evaluation that follows -- and every later evaluation of the
checkpoint, which picks T* up from the sidecar -- divides each MC sample's logits by T* before
its softmax. ``metrics["temperature"]`` names the value used and where it came from.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from ..data.common import IGNORE_INDEX, DatasetMeta
from ..data.transforms import denormalize
from ..errors import CheckpointError, ConfigError, DataError
from ..metrics.calibration import CalibrationMetrics
from ..models.base import has_active_dropout
from ..uncertainty.sampler import MCSampler
from ..uncertainty.temperature import apply_temperature, fit_temperature_streaming
from ..viz.overlays import colorize_labels
from . import eval_report
from .eval_depth import DepthEval, DepthExamples, depth_maps
from .eval_metrics import SegmentationEval

CACHE_MB = 512  # deterministic logits kept in memory for the temperature fit's Newton passes


def checkpoint_task(model, info: dict) -> str:
    task = info.get("kind") or (info.get("meta") or {}).get("task")
    task = task or (getattr(model, "spec", None) or {}).get("task")
    if task not in ("segmentation", "depth", "joint"):
        raise CheckpointError(f"checkpoint task {task!r} is not segmentation, depth or joint")
    return task


def _crop(t: torch.Tensor, i: int, h: int, w: int) -> torch.Tensor:
    return t[i : i + 1, ..., :h, :w]


def _sizes(batch: dict, x: torch.Tensor) -> list[tuple[int, int]]:
    sizes = batch.get("orig_size")
    if sizes is None:
        return [tuple(x.shape[-2:])] * x.shape[0]
    return [(int(h), int(w)) for h, w in sizes]


def deterministic_logits(model, loader, device, progress: bool = False):
    """Yield (logits, label) per image, cropped to its original size; model in eval mode
    (MC dropout off). Caches the labelled pixels' logits up to CACHE_MB so the temperature
    fit's repeated passes do not re-run the network on small splits."""
    cache, cached_bytes, complete = [], 0, True

    def run():
        nonlocal cached_bytes, complete
        model.eval()
        bar = tqdm(loader, desc="temperature fit", unit="batch", disable=not progress, leave=False)
        for batch in bar:
            x = batch["image"].to(device)
            with torch.no_grad():
                logits = model(x)["logits"].float()
            for i, (h, w) in enumerate(_sizes(batch, x)):
                z = _crop(logits, i, h, w)
                y = _crop(batch["label"], i, h, w).to(device)
                keep = y.reshape(-1) != IGNORE_INDEX
                pix = (
                    z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])[keep].cpu(),
                    y.reshape(-1)[keep].cpu(),
                )
                if complete:
                    cached_bytes += pix[0].numel() * 4
                    if cached_bytes <= CACHE_MB * 2**20:
                        cache.append(pix)
                    else:
                        complete = False
                        cache.clear()
                yield pix

    first = [True]

    def batch_fn():
        if first[0]:
            first[0] = False
            return run()
        return iter(cache) if complete else run()

    return batch_fn


def fit_split_temperature(
    model, loader, device, num_classes: int, per_class: bool, n_bins: int, progress: bool
) -> dict:
    """Fit T* on the split's deterministic logits; ECE / NLL before and after scaling."""
    batch_fn = deterministic_logits(model, loader, device, progress)
    value = fit_temperature_streaming(batch_fn, num_classes, per_class=per_class)
    before, after = CalibrationMetrics(num_classes, n_bins), CalibrationMetrics(num_classes, n_bins)
    for z, y in batch_fn():
        if y.numel() == 0:
            continue
        zz, yy = z.T.reshape(1, num_classes, 1, -1), y.view(1, 1, -1)
        before.update(torch.softmax(zz, 1), yy)
        after.update(torch.softmax(apply_temperature(zz, value), 1), yy)
    b, a = before.compute(), after.compute()
    if isinstance(value, torch.Tensor):
        value = [round(float(v), 6) for v in value]
    else:
        value = round(float(value), 6)
    return {
        "value": value,
        "per_class": per_class,
        "fitted_on": "deterministic logits (eval mode, dropout off)",
        "ece_before": b["ece"],
        "ece_after": a["ece"],
        "nll_before": b["nll"],
        "nll_after": a["nll"],
    }


def _sampler_temperature(value, num_classes: int):
    if value is None:
        return 1.0
    t = torch.as_tensor(value, dtype=torch.float32).flatten()
    if t.numel() == 1:
        return float(t)
    if t.numel() != num_classes:
        raise CheckpointError(
            f"temperature has {t.numel()} values but the model has {num_classes} classes"
        )
    return t


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


def evaluate_checkpoint(
    model,
    info: dict,
    loader,
    mc_samples: int,
    device,
    n_bins: int = 15,
    examples: int = 4,
    out_dir: str | Path = "eval",
    temperature=None,
    fit_temperature: bool = False,
    per_class_temperature: bool = False,
    use_sidecar_temperature: bool = True,
    memory_budget_mb: float = 1024.0,
    seed: int = 0,
    split: str = "val",
    progress: bool = True,
) -> dict:
    """Evaluate ``model`` (from ``load_checkpoint``; ``info`` is its sidecar dict) on every image
    of ``loader`` with ``mc_samples`` MC-dropout samples; write the report into ``out_dir`` and
    return the metrics dict (= metrics.json, NaN there as null).

    ``temperature``: scalar or per-class list dividing the logits (overrides the sidecar's);
    ``fit_temperature``: fit it first (per class with ``per_class_temperature``) and store it in
    ``info["sidecar_path"]``; ``use_sidecar_temperature=False`` ignores a stored one.
    """
    device = torch.device(device)
    model = model.to(device).eval()
    task = checkpoint_task(model, info)
    meta = DatasetMeta.from_dict(info.get("meta") or {})
    spec = getattr(model, "spec", None) or info.get("model_spec") or {}
    seg = task in ("segmentation", "joint")
    num_classes = len(meta.class_names)
    temp = {"value": None, "source": "none"}
    if fit_temperature and not seg:
        raise ConfigError("temperature scaling needs class logits: this is a depth checkpoint")
    if seg and fit_temperature:
        temp = fit_split_temperature(
            model, loader, device, num_classes, per_class_temperature, n_bins, progress
        )
        temp["source"] = "fitted"
        if info.get("sidecar_path"):
            from .checkpoint import update_sidecar

            update_sidecar(info["sidecar_path"], temperature=temp["value"])
            temp["stored_in"] = str(info["sidecar_path"])
    elif seg and temperature is not None:
        temp = {"value": temperature, "source": "argument"}
    elif seg and use_sidecar_temperature and info.get("temperature") is not None:
        temp = {"value": info["temperature"], "source": "sidecar"}
    sampler = MCSampler(
        model,
        mc_samples,
        memory_budget_mb,
        seed=seed,
        temperature=_sampler_temperature(temp["value"], num_classes),
    )

    seg_eval = (
        SegmentationEval(num_classes, n_bins, bool(spec.get("heteroscedastic"))) if seg else None
    )
    depth_eval = DepthEval(meta, spec.get("depth_dist")) if task in ("depth", "joint") else None
    seg_rows, depth_examples = [], DepthExamples(examples, meta)
    num_images = 0
    total = len(loader.dataset) if hasattr(loader, "dataset") else None
    bar = tqdm(total=total, desc=f"evaluate {split}", unit="img", disable=not progress)
    for batch in loader:
        x = batch["image"].to(device, non_blocking=True)
        out = sampler(x)
        for i, (h, w) in enumerate(_sizes(batch, x)):
            o = {k: _crop(v, i, h, w) for k, v in out.items()}
            name = str(batch["name"][i]) if "name" in batch else f"#{num_images}"
            if seg_eval is not None:
                label = _crop(batch["label"], i, h, w)
                seg_eval.update(o, label)
                if len(seg_rows) < examples:
                    seg_rows.append(_segmentation_example(x[i, :, :h, :w], o, label, meta, name))
            if depth_eval is not None:
                d = depth_maps(o, joint=seg)
                target = _crop(batch["depth"], i, h, w).to(device)
                valid = _crop(batch["valid"], i, h, w).to(device)
                depth_eval.update(d, target, valid)
                if depth_examples.want():
                    depth_examples.add(x[i, :, :h, :w], d, target, valid & (target > 0), name)
            num_images += 1
            bar.update(1)
    bar.close()
    if num_images == 0:
        raise DataError(f"split {split!r} has no images to evaluate")

    metrics: dict = {
        "task": task,
        "split": split,
        "num_images": num_images,
        "mc_samples": int(mc_samples),
        "mc_samples_run": int(mc_samples) if has_active_dropout(model) else 1,
        "n_bins": int(n_bins),
        "temperature": temp,
        "checkpoint": info.get("sidecar_path"),
    }
    rows = []
    if seg_eval is not None:
        seg_metrics, rows = seg_eval.compute(meta.class_names)
        metrics.update(seg_metrics)
    if depth_eval is not None:
        metrics["depth"] = depth_eval.compute()
        metrics.setdefault("num_pixels", metrics["depth"]["count"])
    eval_report.write_report(metrics, rows, meta, out_dir, seg_rows, depth_examples.rows)
    return metrics
