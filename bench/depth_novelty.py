"""Depth: does epistemic uncertainty rise on a room type the model never saw?

nyu-depth-mini has bathrooms and one basement: train on the bathrooms only
(``data.exclude_scenes=[basement]``), then evaluate on the held-out bathroom scenes of val
(seen type) and on the basement (unseen type). Per method (MC dropout; a deep ensemble of
``--members`` runs sharing the same total training time; any extra run given with ``--run``):
RMSE and AbsRel, mean epistemic and aleatoric σ (m), the unseen/seen ratio of the epistemic σ,
AUSE-RMSE and the 90%-interval coverage on each. The better method raises σ where the error
rises and keeps coverage near 90%.

    .venv/bin/python bench/depth_novelty.py --minutes 6 --members 3 --threads 1 --out runs/depth_novelty --json
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from _common import REPO, add_common_args, doc_parser, emit_summary

from seguncert.errors import ConfigError, run_cli

NYU = REPO.parent / "shared" / "datasets" / "nyu-depth-mini"
UNSEEN = "basement_0001b"


def parse_args(argv=None):
    p = doc_parser(__doc__)
    p.add_argument("--data-root", default=str(NYU))
    p.add_argument("--minutes", type=float, default=6.0, help="training minutes per method")
    p.add_argument("--members", type=int, default=3)
    p.add_argument("--mc-samples", type=int, default=20)
    p.add_argument(
        "--run",
        action="append",
        default=[],
        metavar="NAME=RUN",
        help="also evaluate this trained run (e.g. a Concrete-dropout model)",
    )
    p.add_argument("--out", default="runs/depth_novelty")
    add_common_args(p, repeats=1)
    return p.parse_args(argv)


def tool(name: str, *args) -> None:
    cmd = [sys.executable, str(REPO / "tools" / f"{name}.py"), *map(str, args)]
    if subprocess.run(cmd).returncode != 0:
        raise ConfigError(f"tools/{name}.py failed: {' '.join(cmd)}")


def train(args, run: Path, members: int) -> None:
    if (run / "best.json").is_file() or (run / "member_0" / "best.json").is_file():
        return
    minutes = args.minutes / members  # equal total training time
    extra = ["--members", members] if members > 1 else []
    tool(
        "train",
        "--config",
        REPO / "configs" / "nyu_unet_cpu.yaml",
        "--out",
        run,
        "--data-root",
        args.data_root,
        *extra,
        "data.exclude_scenes=[basement]",
        f"train.max_minutes={minutes}",
        "train.epochs=1000",
        f"train.threads={args.threads or 1}",
        "optim.warmup_iters=20",
    )


def evaluate(args, run: Path, out: Path, split: str, scenes: str | None) -> dict:
    if not (out / "metrics.json").is_file():
        extra = ["--scenes", scenes] if scenes else []
        tool(
            "evaluate",
            "--checkpoint",
            run,
            "--data-root",
            args.data_root,
            "--split",
            split,
            "--out",
            out,
            "--mc-samples",
            args.mc_samples,
            "--no-progress",
            *extra,
        )
    d = json.loads((out / "metrics.json").read_text())["depth"]
    keys = (
        "rmse",
        "abs_rel",
        "mean_epistemic_std",
        "mean_aleatoric_std",
        "ause_rmse",
        "coverage_90",
    )
    return {k: d[k] for k in keys}


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    runs = {
        "mc_dropout": (out / "mc_dropout", 1),
        f"ensemble_{args.members}": (out / "ensemble", args.members),
    }
    for item in args.run:
        name, path = item.split("=", 1)
        runs[name] = (Path(path), 0)
    rows = []
    for name, (run, members) in runs.items():
        if members:
            train(args, run, members)
        seen = evaluate(args, run, out / f"{name}_seen", "val", None)
        unseen = evaluate(args, run, out / f"{name}_unseen", "train", UNSEEN)
        ratio = unseen["mean_epistemic_std"] / max(seen["mean_epistemic_std"], 1e-12)
        rows.append({"method": name, "seen": seen, "unseen": unseen, "epistemic_ratio": ratio})
        print(
            f"{name:<14} RMSE {seen['rmse']:.3f} -> {unseen['rmse']:.3f} m, epistemic sigma "
            f"{seen['mean_epistemic_std']:.3f} -> {unseen['mean_epistemic_std']:.3f} m "
            f"({ratio:.2f}x), 90% coverage {100 * seen['coverage_90']:.0f}% -> "
            f"{100 * unseen['coverage_90']:.0f}%, AUSE {unseen['ause_rmse']:.3f}",
            flush=True,
        )
    emit_summary({"bench": "depth_novelty", "rows": rows}, args.json)
    return 0


if __name__ == "__main__":
    run_cli(main)
