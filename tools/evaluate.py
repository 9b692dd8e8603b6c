#!/usr/bin/env python
"""Evaluate a checkpoint with MC dropout: accuracy, calibration and uncertainty quality.

Streams every valid pixel of a split through the MC sampler (T dropout samples per image, the
deterministic prefix computed once) and writes into --out:

  metrics.json                 every number (mIoU, per-class IoU, ECE/MCE, class-wise ECE, NLL,
                               Brier, PAvPU, AUROC/AUPR/AURC per uncertainty map, temperature;
                               depth: AbsRel, RMSE, deltas, AUSE, NLL, interval coverage)
  calibration_per_class.md/csv per-class table (IoU, accuracy, share, class-wise ECE, ...)
  reliability.png              top-label reliability diagram
  reliability_per_class.png    overall + one reliability panel per class
  precision_vs_uncertainty.png accuracy after dropping the most uncertain x% (Kendall & Gal)
  examples.png                 input | prediction | errors | aleatoric | epistemic
  sparsification.png           depth checkpoints: sparsification vs oracle

Temperature scaling: --fit-temperature fits T* on this split by minimising the NLL of the
deterministic logits (dropout off), stores it in the checkpoint sidecar and reports ECE/NLL
before and after. Without it, a temperature already in the sidecar is applied.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from seguncert.errors import CheckpointError, DataError, SeguncertError, run_cli


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    a = p.add_argument
    a("--checkpoint", required=True, metavar="CKPT", help="run folder (uses best) or .json")
    a(
        "--data-root",
        metavar="DIR",
        help="dataset folder (CamVid / depth layout); not needed for synthetic checkpoints.\n"
        "Overrides data.root stored in the checkpoint's config",
    )
    a(
        "--split",
        default="val",
        help="split to evaluate: val | test | train (default val);\n"
        "always read with the eval transform (no augmentation)",
    )
    a(
        "--mc-samples",
        type=int,
        metavar="T",
        help="MC dropout samples T per image (default: the checkpoint's\n"
        "mc.samples; 1 with a model without dropout)",
    )
    a(
        "--out",
        required=True,
        metavar="DIR",
        help="output folder for metrics.json, tables and figures",
    )
    a("--batch-size", type=int, metavar="N", default=2, help="images per forward pass (default 2)")
    a("--limit", type=int, metavar="N", help="evaluate only the first N images of the split")
    a(
        "--bins",
        type=int,
        metavar="B",
        default=15,
        help="confidence bins for ECE / reliability (default 15)",
    )
    a(
        "--examples",
        type=int,
        metavar="N",
        default=4,
        help="images shown in examples.png (default 4)",
    )
    a(
        "--fit-temperature",
        action="store_true",
        help="fit a temperature on this split (NLL of deterministic logits), store it in the\n"
        "checkpoint sidecar, apply it, and report ECE/NLL before and after",
    )
    a(
        "--per-class-temperature",
        action="store_true",
        help="with --fit-temperature: one temperature per class instead of one scalar",
    )
    a("--no-temperature", action="store_true", help="ignore a temperature stored in the sidecar")
    a(
        "--memory-budget-mb",
        type=float,
        metavar="MB",
        help="bound on each replicated MC suffix batch\n"
        "(default: the checkpoint's mc.memory_budget_mb)",
    )
    a("--seed", type=int, metavar="S", default=0, help="seed of the dropout masks (default 0)")
    a("--device", default="auto", help="auto | cpu | cuda | cuda:N (auto: cuda when available)")
    a("--workers", type=int, metavar="N", default=0, help="DataLoader worker processes (default 0)")
    a("--no-progress", action="store_true", help="no tqdm progress bar")
    args = p.parse_args(argv)
    for name in ("mc_samples", "batch_size", "limit", "bins", "memory_budget_mb"):
        v = getattr(args, name)
        if v is not None and v < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.examples < 0 or args.workers < 0:
        p.error("--examples and --workers must be >= 0")
    if args.per_class_temperature and not args.fit_temperature:
        p.error("--per-class-temperature needs --fit-temperature")
    if args.fit_temperature and args.no_temperature:
        p.error("--fit-temperature and --no-temperature exclude each other")
    return args


def pick_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise SeguncertError(
            f"--device {name!r} is not a device (auto, cpu, cuda, cuda:N)"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SeguncertError(f"--device {name}: CUDA is not available on this machine")
    return dev


def build_loader(info: dict, args):
    """The requested split of the checkpoint's own dataset config, with the eval transform."""
    import torch

    from seguncert.config import config_from_dict
    from seguncert.data.build import build_datasets

    cfg = config_from_dict(info.get("config") or {})
    if args.data_root is not None:
        cfg.data.root = str(args.data_root)
    elif cfg.data.dataset != "synthetic":
        if not cfg.data.root or not Path(cfg.data.root).is_dir():
            raise DataError(
                f"--data-root is required: the checkpoint's data root {cfg.data.root!r} "
                "is not a folder here"
            )
    cfg.data.val_split = args.split
    cfg.data.limit_val = args.limit
    # build_datasets also builds the training split: keep that cheap (one frame, no class
    # weights; the checkpoint's own meta is what the evaluation uses).
    cfg.data.limit_train = 1
    cfg.loss.class_weights = "none"
    cfg.data.num_workers = args.workers
    _, val_ds, _ = build_datasets(cfg)
    if len(val_ds) == 0:
        raise DataError(f"split {args.split!r} of {cfg.data.root or 'synthetic data'} is empty")
    return torch.utils.data.DataLoader(
        val_ds, batch_size=args.batch_size, shuffle=False, num_workers=args.workers
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    ckpt = Path(args.checkpoint)
    if not ckpt.exists():
        raise CheckpointError(f"checkpoint not found: {ckpt}")
    if args.data_root is not None and not Path(args.data_root).is_dir():
        raise DataError(f"data root not found: {args.data_root}")
    # Imported after the argument checks so a bad path fails fast (torch takes seconds).
    from seguncert.engine.checkpoint import load_checkpoint
    from seguncert.engine.eval_report import summary_text
    from seguncert.engine.evaluation import evaluate_checkpoint

    device = pick_device(args.device)
    model, info = load_checkpoint(ckpt, map_location=device)
    cfg_mc = (info.get("config") or {}).get("mc") or {}
    loader = build_loader(info, args)
    metrics = evaluate_checkpoint(
        model,
        info,
        loader,
        mc_samples=args.mc_samples or int(cfg_mc.get("samples", 20)),
        device=device,
        n_bins=args.bins,
        examples=args.examples,
        out_dir=Path(args.out),
        fit_temperature=args.fit_temperature,
        per_class_temperature=args.per_class_temperature,
        use_sidecar_temperature=not args.no_temperature,
        memory_budget_mb=args.memory_budget_mb or float(cfg_mc.get("memory_budget_mb", 1024)),
        seed=args.seed,
        split=args.split,
        progress=not args.no_progress,
    )
    print(summary_text(metrics, Path(args.out)))
    return 0


if __name__ == "__main__":
    run_cli(main)
