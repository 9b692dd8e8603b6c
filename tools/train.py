#!/usr/bin/env python
"""Train a seguncert model from a YAML config.

Examples:
  python tools/train.py --config configs/synthetic_demo.yaml
  python tools/train.py --config configs/camvid_unet_cpu.yaml --data-root ~/data/camvid \\
      train.epochs=30 optim.lr=5e-4
  python tools/train.py --config configs/camvid_unet_cpu.yaml --resume   # continue runs/<stem>
  torchrun --nproc_per_node=4 tools/train.py --config configs/camvid_unet_resnet34.yaml

The run folder gets config.yaml (the resolved config), best.safetensors/.json and
last.safetensors/.json (weights + sidecar), last.state.* (resume state), log.csv and tb/
(TensorBoard). User errors (bad key, missing data) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Run from a checkout without installing: make the package beside tools/ importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seguncert.config import load_config  # noqa: E402
from seguncert.errors import run_cli  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="train.py",
        description="Train a Bayesian segmentation / depth model (MC dropout + learned "
        "aleatoric noise) and write checkpoints, logs and the resolved config to a run folder.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Overrides use section.key=value with YAML values, e.g. train.epochs=5 "
        "data.size=[180,240] model.heteroscedastic=false. Sections: data, model, loss, optim, "
        "train, mc.",
    )
    p.add_argument(
        "--config",
        required=True,
        metavar="YAML",
        help="config file (see configs/); its file name stem names the default run folder",
    )
    p.add_argument(
        "--data-root",
        metavar="DIR",
        help="dataset folder; overrides data.root from the config (relative paths in the "
        "config resolve against the current directory)",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        help="run folder for checkpoints and logs (default: runs/<config stem>)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last epoch (weights, optimiser, scheduler, "
        "RNG); the same config resumes exactly",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="section.key=value",
        help="config overrides applied after the file, e.g. train.epochs=2 optim.lr=1e-4",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)  # ConfigError names a bad key or value
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem

    # Imported after the config is checked so a typo fails fast (torch/smp imports take seconds).
    from seguncert.engine.distributed import cleanup
    from seguncert.engine.trainer import fit

    try:
        fit(cfg, out, resume=args.resume, data_root=args.data_root)
    finally:
        cleanup()
    return 0


if __name__ == "__main__":
    run_cli(main)
