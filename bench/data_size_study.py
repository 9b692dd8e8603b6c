"""Kendall & Gal 2017, Table 3 on CamVid: aleatoric and epistemic uncertainty vs training data.

Trains the CPU recipe on a random 1/4, 1/2 and all of the training frames for the same number
of epochs (``data.train_fraction``, seeded), then evaluates each on CamVid val with pasted
out-of-distribution objects (``evaluate.py --ood-paste``): mean aleatoric (expected entropy) and
epistemic (mutual information) over the labelled val pixels and over the pasted OOD pixels, and
mIoU. Expected (the paper): epistemic falls as data grows, aleatoric stays about flat, and
epistemic on OOD pixels is several times the in-distribution value. An existing run folder for a
fraction is reused (``--reuse FRACTION=RUN``, e.g. the 40-minute model for all the data).

    .venv/bin/python bench/data_size_study.py --epochs 17 --threads 1 \\
        --reuse 1.0=runs/camvid_base40 --out runs/data_size --json

At a quarter of the pixels (--size 90x120, 20 epochs) the trainings took 4.3, 14.5 and 23.2
minutes (1/4, 1/2, all) on cores shared by four jobs; fractions can run as separate processes
into the same --out (docs/benchmarks.md, "Kendall & Gal Table 3").
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from _common import DEFAULT_CAMVID, REPO, add_common_args, doc_parser, emit_summary, parse_hw

from seguncert.errors import ConfigError, run_cli


def parse_args(argv=None):
    p = doc_parser(__doc__)
    p.add_argument("--data-root", default=str(DEFAULT_CAMVID))
    p.add_argument("--fractions", default="0.25,0.5,1.0")
    p.add_argument("--epochs", type=int, default=17)
    p.add_argument("--size", default=None, help="training size HxW (default: the recipe's 180x240)")
    p.add_argument("--mc-samples", type=int, default=20)
    p.add_argument("--reuse", action="append", default=[], metavar="FRACTION=RUN")
    p.add_argument("--out", default="runs/data_size")
    add_common_args(p, repeats=1)
    return p.parse_args(argv)


def tool(name: str, *args) -> None:
    cmd = [sys.executable, str(REPO / "tools" / f"{name}.py"), *map(str, args)]
    r = subprocess.run(cmd)
    if r.returncode != 0:
        raise ConfigError(f"tools/{name}.py failed (exit {r.returncode}): {' '.join(cmd)}")


def train(args, fraction: float, run: Path) -> None:
    if (run / "best.json").is_file():
        return  # a finished (or reused) run
    overrides = [
        f"data.train_fraction={fraction}",
        f"train.epochs={args.epochs}",
        "train.max_minutes=null",
        f"train.val_every={args.epochs}",
        f"train.threads={args.threads or 1}",
    ]
    if args.size:
        h, w = parse_hw(args.size)
        overrides.append(f"data.size=[{h},{w}]")
    tool(
        "train",
        "--config",
        REPO / "configs" / "camvid_unet_cpu.yaml",
        "--out",
        run,
        "--data-root",
        args.data_root,
        *overrides,
    )


def evaluate(args, run: Path, out: Path) -> dict:
    if not (out / "metrics.json").is_file():
        tool(
            "evaluate",
            "--checkpoint",
            run,
            "--data-root",
            args.data_root,
            "--out",
            out,
            "--mc-samples",
            args.mc_samples,
            "--ood-paste",
            0,
            "--calibration",
            "none",
            "--no-progress",
        )
    m = json.loads((out / "metrics.json").read_text())
    nov = {r["map"]: r for r in m["novelty"]["table"]}
    return {
        "miou": m["miou"],
        "aleatoric_id": nov["aleatoric"]["mean_id"],
        "epistemic_id": nov["epistemic"]["mean_id"],
        "aleatoric_ood": nov["aleatoric"]["mean_ood"],
        "epistemic_ood": nov["epistemic"]["mean_ood"],
        "epistemic_ood_over_id": nov["epistemic"]["mean_ood"]
        / max(nov["epistemic"]["mean_id"], 1e-12),
        "auroc_ood_epistemic": nov["epistemic"]["auroc"],
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    reuse = dict(item.split("=", 1) for item in args.reuse)
    rows = []
    for text in args.fractions.split(","):
        fraction = float(text)
        run = Path(reuse.get(text, out / f"train_{text}"))
        train(args, fraction, run)
        row = {"fraction": fraction, "run": str(run), **evaluate(args, run, out / f"eval_{text}")}
        rows.append(row)
        print(
            f"{fraction:>5} of the frames: mIoU {100 * row['miou']:.1f}%, aleatoric "
            f"{row['aleatoric_id']:.4f} (OOD {row['aleatoric_ood']:.4f}), epistemic "
            f"{row['epistemic_id']:.5f} (OOD {row['epistemic_ood']:.5f}, "
            f"{row['epistemic_ood_over_id']:.1f}x)",
            flush=True,
        )
    emit_summary({"bench": "data_size_study", "epochs": args.epochs, "rows": rows}, args.json)
    return 0


if __name__ == "__main__":
    run_cli(main)
