"""Kendall & Gal 2017, Table 1 (depth), measured: four variants at the same CPU budget.

  l1          plain L1 regression, no dropout              (the baseline)
  aleatoric   Laplace NLL head (learned scale), no dropout
  epistemic   plain L1 + MC dropout (decoder preset) at test time
  both        Laplace NLL head + MC dropout

Each variant trains `configs/nyu_unet_cpu.yaml` (with the overrides above) through
`tools/train.py` for `--minutes` of wall clock with `--threads` torch threads (`--parallel`
runs at once: 2 x 1 thread on a 2-core machine gives each the same share), then
`tools/evaluate.py` scores its best checkpoint on the val split with T MC samples (1 for the
variants without dropout): AbsRel, RMSE, log10, δ1 and AUSE (RMSE) of the total uncertainty.

    python bench/depth_variants.py --data-root ../shared/datasets/nyu-depth-mini --minutes 8
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _common import REPO, emit_summary, print_table

from seguncert.errors import ConfigError, run_cli

VARIANTS = {
    "l1": ["loss.depth=l1", "model.dropout=none"],
    "aleatoric": ["loss.depth=laplace", "model.dropout=none"],
    "epistemic": ["loss.depth=l1", "model.dropout=decoder"],
    "both": ["loss.depth=laplace", "model.dropout=decoder"],
}
KEYS = ("abs_rel", "rmse", "log10", "delta1", "ause_rmse", "ause_absrel")


def train_cmd(args, name: str) -> list[str]:
    return [
        sys.executable, str(REPO / "tools" / "train.py"), "--config", args.config,
        "--data-root", args.data_root, "--out", str(Path(args.out) / name),
        f"train.max_minutes={args.minutes}", f"train.threads={args.threads}",
        f"train.epochs={args.epochs}", *VARIANTS[name],
    ]  # fmt: skip


def eval_cmd(args, name: str) -> list[str]:
    t = 1 if "dropout=none" in " ".join(VARIANTS[name]) else args.mc_samples
    return [
        sys.executable, str(REPO / "tools" / "evaluate.py"), "--checkpoint",
        str(Path(args.out) / name), "--data-root", args.data_root, "--split", "val",
        "--mc-samples", str(t), "--out", str(Path(args.out) / name / "eval"), "--no-progress",
    ]  # fmt: skip


def run_batch(cmds: dict[str, list[str]], parallel: int, log_dir: Path) -> None:
    """Run the commands, ``parallel`` at a time; any failure stops with its log's last line."""
    pending, running = list(cmds.items()), {}
    while pending or running:
        while pending and len(running) < parallel:
            name, cmd = pending.pop(0)
            log = open(log_dir / f"{name}.log", "w")
            running[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log)
            print(f"started {name}: {' '.join(cmd[1:])}", flush=True)
        for name, (proc, log) in list(running.items()):
            if proc.poll() is not None:
                log.close()
                del running[name]
                if proc.returncode != 0:
                    tail = (log_dir / f"{name}.log").read_text().strip().splitlines()[-1:]
                    raise ConfigError(f"{name} failed (exit {proc.returncode}): {tail}")
                print(f"finished {name}", flush=True)
        time.sleep(2)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default=str(REPO / "configs" / "nyu_unet_cpu.yaml"))
    p.add_argument("--data-root", default=str(REPO.parent / "shared/datasets/nyu-depth-mini"))
    p.add_argument("--out", default=str(REPO / "runs" / "depth_variants"))
    p.add_argument("--minutes", type=float, default=8.0, help="training budget per variant")
    p.add_argument("--epochs", type=int, default=100, help="upper bound; the budget decides")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--mc-samples", type=int, default=20)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--skip-train", action="store_true", help="only re-evaluate existing runs")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    names = [v for v in args.variants.split(",") if v]
    if unknown := [v for v in names if v not in VARIANTS]:
        raise ConfigError(f"unknown variant(s) {unknown}; expected some of {list(VARIANTS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.skip_train:
        run_batch({n: train_cmd(args, n) for n in names}, args.parallel, out)
    run_batch({f"{n}_eval": eval_cmd(args, n) for n in names}, args.parallel, out)

    results = {}
    for n in names:
        m = json.loads((out / n / "eval" / "metrics.json").read_text())
        results[n] = {k: m["depth"].get(k) for k in KEYS}
        if n == "l1":  # no uncertainty at all: AUSE of an all-zero map is a tie-order artefact
            results[n].update(ause_rmse=None, ause_absrel=None)
    rows = [[n] + [f"{v:.4f}" if isinstance(v, float) else "n/a" for v in r.values()]
            for n, r in results.items()]  # fmt: skip
    print_table(["variant", *KEYS], rows)
    emit_summary({"bench": "depth_variants", "minutes": args.minutes, "threads": args.threads,
                  "mc_samples": args.mc_samples, "results": results}, args.json)  # fmt: skip


if __name__ == "__main__":
    run_cli(main)
