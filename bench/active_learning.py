"""Active learning on CamVid (Gal, Islam & Ghahramani 2017): do MI-picked frames beat random ones?

Pool-based study. Each seed draws an initial labelled set of --initial CamVid training frames;
each round, every acquisition function adds --step frames from the rest of the training set
(the pool): ``bald``/``entropy``/``weighted_bald`` through ``tools/select_frames.py`` with that
arm's model of the previous round (its diversity rule included), ``random`` as a seeded uniform
draw. The pool is given to the tool as one frame folder per CamVid sequence, so its
diversity rule applies along each sequence. Every model is trained from scratch on its labelled frames with the same compute
(--images training images seen, i.e. epochs = images / labelled frames, rounded), then scored on
all of CamVid val with T MC-dropout samples and no calibrator: mIoU and ECE of the fused
prediction. Round 0 is one model per seed, shared by the arms.

Every step is a file in --out, so an interrupted study continues where it stopped (a finished
train, evaluation or selection is not run again). Independent arms run --jobs at a time, one
torch thread each. The summary gives, per arm and budget, the mean and spread over seeds, and
the paired difference to random (same seed, same initial frames), and the share of each CamVid
sequence in the labelled sets (val is sequence 0016E5, which is also 204 of the 367 training
frames: an arm that follows the pool's own mix labels val-like frames).

    .venv/bin/python bench/active_learning.py --seeds 0,1,2 --jobs 2 \\
        --out runs/active --figure docs/active_learning.png --json
"""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from _common import DEFAULT_CAMVID, REPO, add_common_args, doc_parser, emit_summary, parse_ints

from seguncert.data.camvid import CamVidDataset
from seguncert.errors import ConfigError, run_cli

ARMS = ("random", "bald", "entropy", "weighted_bald")


def parse_args(argv=None):
    p = doc_parser(__doc__)
    p.add_argument("--data-root", default=str(DEFAULT_CAMVID))
    p.add_argument("--config", default=str(REPO / "configs" / "camvid_unet_cpu.yaml"))
    p.add_argument("--size", default="90x120", help="training and scoring size HxW")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--arms", default="random,bald", help=f"comma list of {', '.join(ARMS)}")
    p.add_argument("--initial", type=int, default=20, help="labelled frames at round 0")
    p.add_argument("--step", type=int, default=20, help="frames acquired per round")
    p.add_argument("--rounds", type=int, default=3, help="acquisition rounds after round 0")
    p.add_argument("--images", type=int, default=1600, help="training images seen per model")
    p.add_argument("--mc-samples", type=int, default=8, help="T for scoring the pool and val")
    p.add_argument("--jobs", type=int, default=2, help="arms trained at once (1 thread each)")
    p.add_argument("--out", default="runs/active")
    p.add_argument("--figure", default=None, help="write the learning curves to this PNG")
    add_common_args(p, repeats=1)
    args = p.parse_args(argv)
    args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.arm_list = [a.strip() for a in args.arms.split(",") if a.strip()]
    bad = [a for a in args.arm_list if a not in ARMS]
    if bad or not args.arm_list or not args.seed_list:
        raise ConfigError(f"--arms must list some of {', '.join(ARMS)}; --seeds some ints")
    parse_ints(f"{args.initial},{args.step},{args.rounds},{args.images},{args.jobs}", "sizes")
    if args.quick:
        args.seed_list, args.rounds, args.images, args.size = args.seed_list[:1], 1, 64, "45x60"
        args.initial, args.step, args.mc_samples = 6, 6, 2
    return args


def tool(name: str, *cmd_args, log: Path) -> None:
    """Run tools/<name>.py, its output into ``log``; a one-line error naming the log on failure."""
    cmd = [sys.executable, str(REPO / "tools" / f"{name}.py"), *map(str, cmd_args)]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=_env())
    if r.returncode != 0:
        raise ConfigError(f"tools/{name}.py failed (exit {r.returncode}); see {log}")


def _env() -> dict:
    import os

    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def train(args, frames: list[str], step: Path, seed: int) -> Path:
    """A model trained from scratch on ``frames`` with --images images of compute."""
    run = step / "run"
    if (run / "best.json").is_file():
        return run
    listed = step / "labelled.txt"
    listed.write_text("".join(f"{f}\n" for f in frames))
    h, w = (int(v) for v in args.size.split("x"))
    epochs = max(1, round(args.images / len(frames)))
    overrides = [
        f"data.train_list={listed}",
        f"data.size=[{h},{w}]",
        f"train.epochs={epochs}",
        f"train.val_every={epochs}",  # one validation, after the last epoch: best = last
        "train.max_minutes=null",
        "train.threads=1",
        f"train.seed={seed}",
        "optim.warmup_iters=20",
    ]
    cfg = ["--config", args.config, "--data-root", args.data_root, "--overwrite"]
    tool("train", *cfg, "--out", run, *overrides, log=step / "train.log")
    for f in run.glob("last.*"):  # the resume state of a finished run: 170 MB a model
        f.unlink()
    return run


def evaluate(args, run: Path, step: Path) -> dict:
    out = step / "eval"
    if not (out / "metrics.json").is_file():
        tool("evaluate", "--checkpoint", run, "--data-root", args.data_root, "--out", out,
             "--mc-samples", args.mc_samples, "--calibration", "none", "--no-progress",
             "--overwrite", log=step / "eval.log")  # fmt: skip
    m = json.loads((out / "metrics.json").read_text())
    return {"miou": m["miou"], "ece": m["ece"], "nll": m["nll"]}


def acquire(args, arm: str, run: Path, pool: list[str], step: Path, seed: int) -> list[str]:
    """``--step`` frames of ``pool`` picked by ``arm`` with the model in ``run``."""
    if arm == "random":
        rng = np.random.default_rng([seed, len(pool), 11])
        return sorted(rng.choice(pool, size=min(args.step, len(pool)), replace=False).tolist())
    out = step / "selection"
    if not (out / "picks.csv").is_file():
        paths = pool_folders(args, pool, step / "pool")
        tool("select_frames", "--checkpoint", run, "--input", *paths, "--budget", args.step,
             "--acquisition", arm, "--mc-samples", args.mc_samples, "--seed", seed,
             "--threads", 1, "--out", out, "--overwrite", log=step / "select.log")  # fmt: skip
    with open(out / "picks.csv", newline="") as f:
        return sorted(Path(row["path"]).stem for row in csv.DictReader(f))


def pool_folders(args, pool: list[str], root: Path) -> list[Path]:
    """The pool as one folder of links per CamVid sequence (the name's prefix), so that the
    tool's diversity rule (--min-gap frames within an input) applies along each sequence."""
    folders = set()
    for name in pool:
        folder = root / name.split("_", 1)[0]
        folder.mkdir(parents=True, exist_ok=True)
        link = folder / f"{name}.png"
        if not link.exists():
            link.symlink_to((Path(args.data_root) / "train" / f"{name}.png").resolve())
        folders.add(folder)
    return sorted(folders)


def round_zero(args, names: list[str], seed: int) -> dict:
    rng = np.random.default_rng([seed, 5])
    frames = sorted(rng.choice(names, size=args.initial, replace=False).tolist())
    step = Path(args.out) / f"seed{seed}" / "round0"
    step.mkdir(parents=True, exist_ok=True)
    run = train(args, frames, step, seed)
    row = {"seed": seed, "round": 0, "labelled": len(frames), "sequences": sequences(frames),
           **evaluate(args, run, step)}  # fmt: skip
    print(f"seed {seed} round 0: {len(frames)} frames, mIoU {100 * row['miou']:.1f}%", flush=True)
    return {"frames": frames, "run": run, "row": row}


def arm_chain(args, names: list[str], seed: int, arm: str, start: dict) -> list[dict]:
    """Rounds 1..R of one arm for one seed: acquire with the last model, retrain, evaluate."""
    frames, run, rows = list(start["frames"]), start["run"], []
    for r in range(1, args.rounds + 1):
        step = Path(args.out) / f"seed{seed}" / arm / f"round{r}"
        step.mkdir(parents=True, exist_ok=True)
        pool = sorted(set(names) - set(frames))
        frames = sorted(frames + acquire(args, arm, run, pool, step, seed))
        run = train(args, frames, step, seed)
        row = {"seed": seed, "arm": arm, "round": r, "labelled": len(frames),
               "sequences": sequences(frames)}  # fmt: skip
        rows.append({**row, **evaluate(args, run, step)})
        print(f"seed {seed} {arm} round {r}: {len(frames)} frames, "
              f"mIoU {100 * rows[-1]['miou']:.1f}%", flush=True)  # fmt: skip
    return rows


def sequences(frames: list[str]) -> dict[str, int]:
    """Labelled frames per CamVid sequence (the name's prefix, e.g. 0016E5: val's sequence)."""
    return dict(sorted(Counter(f.split("_", 1)[0] for f in frames).items()))


def print_mix(rows: list[dict], arms: list[str]) -> None:
    """Share (%) of each sequence in the labelled sets, mean over seeds, per arm and budget."""
    names = sorted({k for r in rows for k in r["sequences"]})
    print("| arm | labelled | " + " | ".join(f"{n} %" for n in names) + " |")
    print("|---|---|" + "---|" * len(names))
    for arm in arms:
        for n in sorted({r["labelled"] for r in rows if r["arm"] == arm}):
            cell = [r for r in rows if r["arm"] == arm and r["labelled"] == n]
            share = [statistics.fmean(100 * r["sequences"].get(k, 0) / n for r in cell)
                     for k in names]  # fmt: skip
            print(f"| {arm} | {n} | " + " | ".join(f"{v:.0f}" for v in share) + " |")


def summarise(rows: list[dict], arms: list[str]) -> list[dict]:
    """Per arm and budget: mean, sd, min, max over seeds; paired difference to random."""
    table = []
    key = {(r["arm"], r["labelled"], r["seed"]): r for r in rows}
    for arm in arms:
        for n in sorted({r["labelled"] for r in rows}):
            cell = [r for r in rows if r["arm"] == arm and r["labelled"] == n]
            if not cell:
                continue
            entry = {"arm": arm, "labelled": n, "seeds": len(cell)}
            for m in ("miou", "ece"):
                vals = [r[m] for r in cell]
                entry[m] = statistics.fmean(vals)
                entry[f"{m}_sd"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
            base = [key.get(("random", n, r["seed"])) for r in cell]
            if arm != "random" and all(base):
                diff = [r["miou"] - b["miou"] for r, b in zip(cell, base)]
                entry["miou_minus_random"] = statistics.fmean(diff)
                entry["miou_minus_random_sd"] = statistics.stdev(diff) if len(diff) > 1 else 0.0
                entry["wins_over_random"] = sum(d > 0 for d in diff)
            table.append(entry)
    return table


def print_table(table: list[dict]) -> None:
    print("| arm | labelled | mIoU % (sd) | ECE % (sd) | mIoU - random (sd), wins |")
    print("|---|---|---|---|---|")
    for e in table:
        d = ""
        if "miou_minus_random" in e:
            d = (f"{100 * e['miou_minus_random']:+.1f} ({100 * e['miou_minus_random_sd']:.1f}), "
                 f"{e['wins_over_random']}/{e['seeds']}")  # fmt: skip
        print(f"| {e['arm']} | {e['labelled']} | {100 * e['miou']:.1f} ({100 * e['miou_sd']:.1f})"
              f" | {100 * e['ece']:.1f} ({100 * e['ece_sd']:.1f}) | {d} |")  # fmt: skip


def plot(table: list[dict], arms: list[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for arm in arms:
        cells = [e for e in table if e["arm"] == arm]
        x = [e["labelled"] for e in cells]
        for ax, m in zip(axes, ("miou", "ece")):
            y = np.array([100 * e[m] for e in cells])
            sd = np.array([100 * e[f"{m}_sd"] for e in cells])
            ax.plot(x, y, marker="o", label=arm)
            ax.fill_between(x, y - sd, y + sd, alpha=0.2)
    for ax, title in zip(axes, ("val mIoU % (mean ± sd over seeds)", "val ECE %")):
        ax.set_xlabel("labelled training frames")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def main(argv=None) -> int:
    args = parse_args(argv)
    names = CamVidDataset(args.data_root, "train").frame_names()
    need = args.initial + args.step * args.rounds
    if need > len(names):
        raise ConfigError(f"the study needs {need} training frames, the split has {len(names)}")
    with ThreadPoolExecutor(args.jobs) as pool:
        starts = dict(zip(args.seed_list, pool.map(
            lambda s: round_zero(args, names, s), args.seed_list)))  # fmt: skip
        jobs = [(s, a) for s in args.seed_list for a in args.arm_list]
        chains = list(pool.map(lambda j: arm_chain(args, names, *j, starts[j[0]]), jobs))
    rows = [{**st["row"], "arm": a} for st in starts.values() for a in args.arm_list]
    rows += [r for chain in chains for r in chain]
    table = summarise(rows, args.arm_list)
    print_table(table)
    print_mix(rows, args.arm_list)
    if args.figure:
        plot(table, args.arm_list, args.figure)
    (Path(args.out) / "results.json").write_text(json.dumps({"rows": rows, "table": table}))
    summary = {"bench": "active_learning", "size": args.size, "images": args.images,
               "mc_samples": args.mc_samples, "seeds": args.seed_list, "table": table}  # fmt: skip
    emit_summary(summary, args.json)
    return 0


if __name__ == "__main__":
    run_cli(main)
