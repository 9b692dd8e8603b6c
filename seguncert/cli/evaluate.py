"""Evaluate a checkpoint with MC dropout: accuracy, calibration and uncertainty quality.

Streams every valid pixel of a split through the MC sampler (T dropout samples per image, the
deterministic prefix computed once) and writes into --out:

  metrics.json                 every number (mIoU, per-class IoU, ECE/MCE, class-wise ECE, NLL,
                               Brier, PAvPU, AUROC/AUPR/AURC per uncertainty map, calibration;
                               depth: AbsRel, RMSE, deltas, AUSE, NLL, interval coverage)
  calibration_per_class.md/csv per-class table (IoU, accuracy, share, class-wise ECE, ...)
  reliability.png              top-label reliability diagram
  reliability_per_class.png    overall + one reliability panel per class
  precision_vs_uncertainty.png accuracy after dropping the most uncertain x% (Kendall & Gal)
  examples.png                 input | prediction | errors | aleatoric | epistemic
  sparsification.png           depth checkpoints: sparsification vs oracle

Calibration: --calibrate KINDS fits calibrators (temperature, class_temperature, vector,
dirichlet, logit_adjust, local_temperature, or all) on the MC predictive of calibration frames,
keeps the one with the lowest NLL on held-out calibration frames, stores it in the checkpoint
sidecar and evaluates with it. The calibration frames are --calibration-split (default: the
evaluated split); when that is the evaluated split, the first --calibration-fraction of its
frames (default 0.5) calibrate and only the rest are scored, so no frame is both. Without
--calibrate, the calibrator stored in the sidecar is applied (--calibration none: raw model).
--calibration-shift refits the chosen kind on the calibration frames plus one corrupted copy
of each per corruption family (noise, blur, weather, digital; 5x the fitting passes): its
probabilities then stay calibrated under degraded inputs (figures in docs/benchmarks.md).

Shift and novelty: --shift CORRUPTIONS scores the raw model and every calibrator (all fitted
ones with --calibrate, else the stored one) on the scored frames under each corruption and
severity (seguncert.data.corruptions; deterministic by --seed), with the Ovadia-style figure
shift.png. --ood-paste SEED pastes foreign objects on the road (seguncert.data.ood_paste) and
adds novelty detection per map. Everything also goes into the self-contained report.html.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import CheckpointError, SeguncertError

FLAGS = [  # (flag, argparse keywords, help)
    ("--checkpoint", dict(required=True, metavar="CKPT"), "run folder (uses best) or .json"),
    ("--data-root", dict(metavar="DIR"), "dataset folder (overrides the checkpoint's data.root)"),
    ("--split", dict(default="val"), "split to evaluate (default val; eval transform)"),
    ("--out", dict(required=True, metavar="DIR"), "output folder for metrics, tables, figures"),
    ("--mc-samples", dict(type=int, metavar="T"), "MC dropout samples (default: checkpoint's)"),
    (
        "--noise-samples",
        dict(type=int, default=0, metavar="S"),
        "logit-noise draws per dropout sample (heteroscedastic heads; default 0)",
    ),
    ("--batch-size", dict(type=int, default=2, metavar="N"), "images per forward (default 2)"),
    ("--limit", dict(type=int, metavar="N"), "evaluate only the first N images of the split"),
    ("--bins", dict(type=int, default=15, metavar="B"), "confidence bins (default 15)"),
    ("--examples", dict(type=int, default=4, metavar="N"), "images in examples.png (default 4)"),
    ("--calibrate", dict(metavar="KINDS"), "fit calibrators (comma list or all), see above"),
    ("--calibration-split", dict(metavar="SPLIT"), "frames the calibrators are fitted on"),
    (
        "--calibration-shift",
        dict(action="store_true"),
        "refit the chosen calibrator on the frames plus corrupted copies (robust under shift)",
    ),
    (
        "--calibration-fraction",
        dict(type=float, default=0.5, metavar="F"),
        "share of the split that calibrates when it is also evaluated (default 0.5)",
    ),
    (
        "--calibration",
        dict(choices=("stored", "none"), default="stored"),
        "without --calibrate: apply the stored calibrator (default) or none",
    ),
    (
        "--shift",
        dict(metavar="CORRUPTIONS"),
        "also score every calibrator under CamVid-C corruptions (comma list or all) of the "
        "scored frames: shift.json, shift.png",
    ),
    ("--severities", dict(default="1,2,3,4,5"), "corruption severities for --shift (default 1-5)"),
    (
        "--ood-paste",
        dict(type=int, metavar="SEED"),
        "paste out-of-distribution objects on the road of every scored frame (seeded) and report "
        "novelty detection (AUROC, AP, FPR95) of every map",
    ),
    (
        "--fit-density",
        dict(type=int, nargs="?", const=0, metavar="FRAMES"),
        "fit the feature-density novelty map on the checkpoint's training split (FRAMES evenly "
        "spaced frames; all without a number), store it beside the checkpoint, then evaluate",
    ),
    ("--scenes", dict(metavar="NAMES"), "depth data: evaluate only these scenes (comma list)"),
    ("--memory-budget-mb", dict(type=float, metavar="MB"), "bound on one MC suffix batch"),
    ("--seed", dict(type=int, default=0, metavar="S"), "seed of the dropout masks (default 0)"),
    ("--device", dict(default="auto"), "auto | cpu | cuda | cuda:N"),
    ("--workers", dict(type=int, default=0, metavar="N"), "DataLoader workers (default 0)"),
    ("--no-progress", dict(action="store_true"), "no progress output"),
    ("--overwrite", dict(action="store_true"), "replace an existing report in --out"),
]
POSITIVE = ("mc_samples", "batch_size", "limit", "bins", "memory_budget_mb")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="seguncert-evaluate",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    for flag, kw, text in FLAGS:
        p.add_argument(flag, help=text, **kw)
    args = p.parse_args(argv)
    for name in POSITIVE:
        v = getattr(args, name)
        if v is not None and v < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.examples < 0 or args.workers < 0 or args.noise_samples < 0:
        p.error("--examples, --workers and --noise-samples must be >= 0")
    if args.fit_density is not None and args.fit_density < 0:
        p.error("--fit-density FRAMES must be >= 0 (0 or no number: every frame)")
    if not 0 < args.calibration_fraction < 1:
        p.error("--calibration-fraction must be between 0 and 1")
    if (args.calibration_split or args.calibration_shift) and not args.calibrate:
        p.error("--calibration-split and --calibration-shift need --calibrate")
    return args


def check_out(out: Path, overwrite: bool) -> None:
    """The report folder is writable, and an earlier report in it is not silently replaced."""
    from ..io.atomic import check_folder_writable

    if (out / "metrics.json").exists() and not overwrite:
        raise SeguncertError(f"{out} already holds a report (metrics.json); pass --overwrite")
    check_folder_writable(out, what=f"report folder {out}")


def eval_settings(args, info):
    from ..evaluate.run import EvalConfig

    mc = (info.get("config") or {}).get("mc") or {}
    return EvalConfig(
        mc_samples=args.mc_samples or int(mc.get("samples", 20)),
        noise_samples=args.noise_samples,
        n_bins=args.bins,
        examples=args.examples,
        memory_budget_mb=args.memory_budget_mb or float(mc.get("memory_budget_mb", 1024)),
        seed=args.seed,
        split=args.split,
        progress=not args.no_progress,
    )


def parse_severities(text: str) -> list[int]:
    try:
        if "-" in text:
            lo, hi = (int(v) for v in text.split("-"))
            values = list(range(lo, hi + 1))
        else:
            values = [int(v) for v in text.split(",")]
        assert values and all(1 <= v <= 5 for v in values)
    except (ValueError, AssertionError):
        raise SeguncertError(
            f"--severities must be like 1-5 or 1,3,5 (1..5), got {text!r}"
        ) from None
    return values


def run_shift(model, info, args, cfg, calibrators: dict, indices, out: Path) -> dict:
    """The --shift study on the scored frames; writes shift.json and shift.png into ``out``."""
    from torch.utils.data import Subset

    from ..data.corruptions import CORRUPTIONS
    from ..evaluate.data import split_dataset
    from ..evaluate.report import json_safe
    from ..evaluate.shift import CorruptedFrames, shift_study, summarise
    from ..io.atomic import atomic_write_json
    from ..viz.shift_plots import shift_plot

    names = list(CORRUPTIONS) if args.shift == "all" else args.shift.split(",")
    severities = parse_severities(args.severities)

    def frames(name, severity):
        wrap = lambda raw: CorruptedFrames(raw, name, severity, args.seed)  # noqa: E731
        ds = split_dataset(info, args.data_root, args.split, args.limit, wrap)
        return Subset(ds, indices) if indices is not None else ds

    rows = shift_study(model, frames, calibrators, cfg, names, severities)
    summary = summarise(rows, 3 if 3 in severities else severities[0])
    atomic_write_json(out / "shift.json", json_safe({"rows": rows, "summary": summary}))
    shift_plot(rows, out / "shift.png")
    return {"table": summary, "corruptions": names, "severities": severities}


def comparison_calibrators(info, fitted: dict | None, chosen) -> dict:
    from ..uncertainty.calibrators import KINDS

    classes = len(info["meta"]["class_names"])
    if fitted:
        return dict(fitted)
    out = {"identity": KINDS["identity"](classes)}
    if chosen is not None:
        out[f"stored {chosen.kind}"] = chosen
    return out


def fit_density(model, info: dict, args, members: int) -> None:
    """--fit-density: fit on the training split and store it (only the sidecar's
    feature_density entry changes; the calibration stays as it is)."""
    from ..evaluate.density_fit import fit_checkpoint_density

    if members > 1:
        raise SeguncertError("--fit-density takes one checkpoint, not an ensemble")
    entry = fit_checkpoint_density(
        model,
        info,
        args.data_root,
        args.fit_density or None,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        seed=args.seed,
    )
    print(
        f"feature density: {entry['pixels']} pixels of {entry['frames']} {entry['split']} "
        f"frames -> {entry['file']}"
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    ckpt = Path(args.checkpoint)
    if not ckpt.exists():
        raise CheckpointError(f"checkpoint not found: {ckpt}")
    out = Path(args.out)
    check_out(out, args.overwrite)
    # Imported after the argument checks so a bad path fails fast (torch takes seconds).
    from ..evaluate.calibration import calibrate_and_store, stored_calibrator
    from ..evaluate.data import split_dataset
    from ..evaluate.report import summary_text
    from ..evaluate.run import evaluate_checkpoint
    from ..runtime.device import resolve_device
    from ..uncertainty.ensemble import load_members

    device = resolve_device(args.device, what="--device")
    models, infos = load_members(ckpt, device)  # one checkpoint, or an ensemble's members
    model, info = models[0], infos[0]
    if len(models) > 1 and (args.calibrate or args.shift):
        raise SeguncertError("--calibrate and --shift take one checkpoint, not an ensemble")
    if args.fit_density is not None:
        fit_density(model, info, args, len(models))
    cfg = eval_settings(args, info)
    wrap = None
    if args.ood_paste is not None:
        from ..data.ood_paste import OODPasteDataset

        wrap = lambda raw: OODPasteDataset(raw, seed=args.ood_paste)  # noqa: E731
    scenes = args.scenes.split(",") if args.scenes else None
    dataset = split_dataset(info, args.data_root, args.split, args.limit, wrap, scenes)
    fitted = None
    if args.calibrate:
        calibrator, dataset, fitted = calibrate_and_store(model, info, dataset, args, cfg)
    else:
        stored = [stored_calibrator(i) for i in infos]
        stored = stored[0] if len(stored) == 1 else stored
        calibrator = stored if args.calibration == "stored" else None
    extra = {}
    if args.shift:
        indices = list(dataset.indices) if hasattr(dataset, "indices") else None
        cals = comparison_calibrators(info, fitted, calibrator)
        extra["shift"] = run_shift(model, info, args, cfg, cals, indices, out)
    loader = data_loader(dataset, args)
    metrics = evaluate_checkpoint(models, info, loader, out, cfg, calibrator, extra)
    print(summary_text(metrics, out))
    return 0


def data_loader(dataset, args):
    import torch

    return torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, shuffle=False, num_workers=args.workers
    )
