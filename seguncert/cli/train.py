"""Train a seguncert model from a YAML config.

Examples:
  python tools/train.py --config configs/synthetic_demo.yaml
  python tools/train.py --config configs/camvid_unet_cpu.yaml --data-root ~/data/camvid \\
      train.epochs=30 optim.lr=5e-4
  python tools/train.py --config configs/camvid_unet_cpu.yaml --resume   # continue runs/<stem>
  torchrun --nproc_per_node=4 tools/train.py --config configs/camvid_unet_resnet34.yaml

The run folder gets config.yaml (the resolved config), best.json and last.json (checkpoint
sidecars) with their content-named weights (best.<hash>.safetensors, ...), last.state.* (resume
state, saved with the last weights as one unit), log.csv and tb/ (TensorBoard). A folder that
already holds a run needs --resume (continue) or --overwrite (start again). Without a terminal
(a pipe, a log file, a job scheduler) a progress line is printed every train.log_seconds.
User errors (bad key, missing data) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import load_config
from ..errors import ConfigError

FLAGS = [  # (flag, argparse keywords, help)
    (
        "--config",
        dict(required=True, metavar="YAML"),
        "config file (see configs/); its file name stem names the default run folder",
    ),
    (
        "--data-root",
        dict(metavar="DIR"),
        "dataset folder; overrides data.root (relative paths resolve against the current folder)",
    ),
    ("--out", dict(metavar="DIR"), "run folder for checkpoints and logs (default: runs/<stem>)"),
    (
        "--resume",
        dict(action="store_true"),
        "continue the run in --out from its last epoch (weights, optimiser, scheduler, RNG); "
        "the same config resumes exactly",
    ),
    (
        "--overwrite",
        dict(action="store_true"),
        "start again in a run folder that already holds a run (its checkpoints are replaced)",
    ),
    (
        "--members",
        dict(type=int, default=1, metavar="M"),
        "train a deep ensemble: M runs with seeds train.seed + m into --out/member_m "
        "(evaluate / infer take the folder and use every member)",
    ),
    (
        "--parallel",
        dict(type=int, default=1, metavar="P"),
        "with --members: train P members at once in separate processes (default 1)",
    ),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="seguncert-train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Overrides use section.key=value with YAML values, e.g. train.epochs=5 "
        "data.size=[180,240] model.heteroscedastic=false. Sections: data, model, loss, optim, "
        "train, mc.",
    )
    for flag, kw, text in FLAGS:
        p.add_argument(flag, help=text, **kw)
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="section.key=value",
        help="config overrides applied after the file, e.g. train.epochs=2",
    )
    # Intermixed: overrides may come before, between or after the flags.
    return p.parse_intermixed_args(argv)


def train_member(config: str, overrides: list[str], out: str, flags: tuple) -> None:
    """One ensemble member in its own process (a picklable entry point)."""
    from ..runtime.distributed import cleanup
    from ..train.fit import fit

    resume, overwrite, data_root = flags
    try:
        fit(
            load_config(config, overrides),
            out,
            resume=resume,
            overwrite=overwrite,
            data_root=data_root,
        )
    finally:
        cleanup()


def train_ensemble(args, cfg, out: Path) -> None:
    """``--members M``: M seeds, sequentially or ``--parallel`` processes at a time."""
    import concurrent.futures as cf
    import multiprocessing as mp

    jobs = []
    for m in range(args.members):
        seed = f"train.seed={cfg.train.seed + m}"
        jobs.append((args.config, [*args.overrides, seed], str(out / f"member_{m}")))
    flags = (args.resume, args.overwrite, args.data_root)
    if args.parallel <= 1:
        for job in jobs:
            train_member(*job, flags)
        return
    ctx = mp.get_context("spawn")  # fresh interpreters: no inherited torch threads or RNGs
    with cf.ProcessPoolExecutor(args.parallel, mp_context=ctx) as pool:
        for f in [pool.submit(train_member, *job, flags) for job in jobs]:
            f.result()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)  # ConfigError names a bad key or value
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    if args.members < 1 or args.parallel < 1:
        raise ConfigError("--members and --parallel must be >= 1")
    if args.members > 1:
        train_ensemble(args, cfg, out)
        return 0

    # Imported after the config is checked so a typo fails fast (torch/smp imports take seconds).
    from ..runtime.distributed import cleanup
    from ..train.fit import fit

    try:
        fit(cfg, out, resume=args.resume, overwrite=args.overwrite, data_root=args.data_root)
    finally:
        cleanup()
    return 0
