"""Calibrators on the MC predictive, fitted on one half of CamVid val and scored on the other
half, then the reverse, averaged (the spread is half the difference of the two directions);
clean and under CamVid-C corruptions at one severity, for each logit-noise setting S.

For each fold the calibration frames give every calibrator kind (fitted on their first 2/3,
the kind with the lowest NLL on the last 1/3 is the "selected" one, as `evaluate.py
--calibrate` does, which then refits it on all of them), and all are scored on the other half:
mIoU (argmax of the calibrated predictive; the identity row is the weighted-training rule),
ECE, mean and max class-wise ECE, NLL, error AUROC of total / aleatoric / epistemic entropy,
and the same under each corruption.

    .venv/bin/python bench/calibration_study.py --checkpoint runs/camvid_base40 --threads 2 --json
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from _common import DEFAULT_CAMVID, add_common_args, doc_parser, emit_summary, setup
from torch.utils.data import Subset

from seguncert.data.camvid import CamVidDataset
from seguncert.data.corruptions import CORRUPTIONS
from seguncert.data.transforms import build_eval_transform
from seguncert.errors import run_cli
from seguncert.evaluate.calibration import (
    ALL_KINDS,
    collect,
    collect_families,
    fit_augmented,
    select,
)
from seguncert.evaluate.run import EvalConfig
from seguncert.evaluate.shift import CorruptedFrames, score_calibrators
from seguncert.evaluate.shift_families import HOLDOUT_GROUPS, holdout_group
from seguncert.io.checkpoint import load_checkpoint

KEYS = (
    "miou",
    "ece",
    "mean_classwise_ece",
    "max_classwise_ece",
    "nll",
    "auroc_entropy",
    "auroc_aleatoric",
    "auroc_epistemic",
)


def parse_args(argv=None):
    p = doc_parser(__doc__)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data-root", default=str(DEFAULT_CAMVID))
    p.add_argument("--mc-samples", type=int, default=10)
    p.add_argument("--noise", default="0,4", help="logit-noise draws S to compare (default 0,4)")
    p.add_argument("--kinds", default="all")
    p.add_argument("--corruptions", default="all")
    p.add_argument("--severity", type=int, default=3)
    p.add_argument(
        "--augment",
        default="selected",
        help="kinds also fitted shift-augmented (KIND+shift; leave-family-out under shift; "
        "'selected': the kind chosen on clean frames, as evaluate.py --calibration-shift); "
        "'none' for none",
    )
    p.add_argument("--score-stride", type=int, default=1, help="score every k-th frame")
    p.add_argument("--out", help="write the full results as JSON here")
    add_common_args(p, repeats=1)
    return p.parse_args(argv)


def halves(n: int, quick: bool) -> list[tuple[range, range]]:
    k = n // 2
    a, b = range(k), range(k, n)
    if quick:
        a, b = range(4), range(k, k + 4)
    return [(a, b), (b, a)]


def augmented(model, raw, tf, fit_ids, clean, cfg, kinds: dict, weights) -> dict:
    """{(name, held-out group or None): calibrator fitted on clean + corrupted copies of the
    families outside the group}; ``kinds`` maps a row name to its calibrator kind."""
    if not kinds:
        return {}
    families = collect_families(model, raw, cfg, tf, fit_ids)
    groups = {None: (), **HOLDOUT_GROUPS}
    return {
        (name, g): fit_augmented(kind, clean, families, weights, cfg, exclude=groups[g])
        for name, kind in kinds.items()
        for g in groups
    }


def run_fold(model, raw, tf, ids, cfg, kinds, weights, corruptions, severity, aug_kinds):
    fit_ids, score_ids = ids
    fit_set = Subset(CorruptedFrames(raw, "clean", 0, 0, tf), fit_ids)
    pixels, crops = collect(model, fit_set, cfg)
    best, table, fitted = select(kinds, pixels, crops, weights, cfg, refit=False)
    named = {k: best.kind if k == "selected" else k for k in aug_kinds}
    aug = augmented(model, raw, tf, fit_ids, (pixels, crops), cfg, named, weights)
    res = {"selected": best.kind, "selection": table}
    for name in ["clean", *corruptions]:
        sev = 0 if name == "clean" else severity
        held_out = None if name == "clean" else holdout_group(name)  # families left out
        cals = {**fitted, **{f"{k}+shift": aug[(k, held_out)] for k in aug_kinds}}
        frames = Subset(CorruptedFrames(raw, name, sev, cfg.seed, tf), score_ids)
        res[name] = score_calibrators(model, frames, cals, cfg, f"{name} {sev}")
    return res


def average(folds: list[dict], corruptions) -> dict:
    """Per setting and calibrator: the mean of the two directions and half their difference."""
    out = {}
    for name in ["clean", *corruptions]:
        out[name] = {}
        for cal in folds[0][name]:
            vals = {k: [f[name][cal][k] for f in folds] for k in KEYS}
            out[name][cal] = {k: float(np.mean(v)) for k, v in vals.items()}
            out[name][cal].update({f"{k}_spread": float(np.ptp(v) / 2) for k, v in vals.items()})
            cw = np.mean([f[name][cal]["classwise_ece"] for f in folds], 0)
            out[name][cal]["classwise_ece"] = cw.tolist()
    return out


def table_rows(avg: dict, corruptions, selected: list[str]) -> list[dict]:
    rows = []
    for cal, clean in avg["clean"].items():
        shifted = [avg[c][cal] for c in corruptions]
        row = {"calibrator": cal + (" (selected)" if cal in selected else "")}
        row.update({f"clean_{k}": clean[k] for k in KEYS})
        row["clean_ece_spread"] = clean["ece_spread"]
        if shifted:
            row["shift_ece"] = float(np.mean([s["ece"] for s in shifted]))
            row["shift_mean_classwise_ece"] = float(
                np.mean([s["mean_classwise_ece"] for s in shifted])
            )
            row["shift_nll"] = float(np.mean([s["nll"] for s in shifted]))
            row["shift_miou"] = float(np.mean([s["miou"] for s in shifted]))
            row["ece_ratio"] = row["shift_ece"] / max(clean["ece"], 1e-12)
        rows.append(row)
    return rows


def print_table(s: int, rows: list[dict]) -> None:
    print(f"\nS = {s} logit-noise draws")
    print(
        f"{'calibrator':<32}{'mIoU':>7}{'ECE':>7}{'cwECE':>7}{'max cw':>7}{'NLL':>7}"
        f"{'AUR ale':>8}{'ECE c3':>8}{'ratio':>7}"
    )
    for r in rows:
        print(
            f"{r['calibrator']:<32}{100 * r['clean_miou']:7.2f}{100 * r['clean_ece']:7.2f}"
            f"{100 * r['clean_mean_classwise_ece']:7.2f}{100 * r['clean_max_classwise_ece']:7.2f}"
            f"{r['clean_nll']:7.3f}{r['clean_auroc_aleatoric']:8.3f}"
            f"{100 * r.get('shift_ece', float('nan')):8.2f}{r.get('ece_ratio', float('nan')):7.2f}"
        )


def main(argv=None) -> int:
    args = parse_args(argv)
    setup(args)
    model, info = load_checkpoint(args.checkpoint)
    meta = info["meta"]
    size = tuple((info.get("config") or {}).get("data", {}).get("size") or (180, 240))
    raw = CamVidDataset(args.data_root, "val", size=size)
    tf = build_eval_transform(meta["mean"], meta["std"])
    kinds = ALL_KINDS if args.kinds == "all" else tuple(args.kinds.split(","))
    corruptions = (
        []
        if args.corruptions == "none"
        else (list(CORRUPTIONS) if args.corruptions == "all" else args.corruptions.split(","))
    )
    if args.quick:
        corruptions = corruptions[:2]
    aug_kinds = [] if args.augment == "none" else args.augment.split(",")
    results, summary = {}, {"bench": "calibration_study", "checkpoint": args.checkpoint}
    for s in (int(v) for v in args.noise.split(",")):
        cfg = EvalConfig(mc_samples=args.mc_samples, noise_samples=s, seed=args.seed)
        folds = [
            run_fold(
                model,
                raw,
                tf,
                (a, b[:: args.score_stride]),
                cfg,
                kinds,
                meta.get("class_weights"),
                corruptions,
                args.severity,
                aug_kinds,
            )
            for a, b in halves(len(raw), args.quick)
        ]
        avg = average(folds, corruptions)
        selected = [f["selected"] for f in folds]
        rows = table_rows(avg, corruptions, selected)
        print_table(s, rows)
        results[f"S{s}"] = {"folds": folds, "average": avg, "rows": rows, "selected": selected}
        summary[f"S{s}"] = rows
    if args.out:
        Path(args.out).write_text(json.dumps(results, default=float, indent=1))
    emit_summary(summary, args.json)
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(True)  # the calibrator fits need autograd
    run_cli(main)
