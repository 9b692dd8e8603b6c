"""tools/train.py end to end (subprocess) and its one-line errors."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "train.py"
TINY = [
    "data.synthetic_train=8", "data.synthetic_val=4", "data.synthetic_size=[32,48]",
    "model.arch=segnet_basic", "model.width=8", "loss.aleatoric_samples=2",
    "loss.class_weights=none", "train.epochs=1", "train.batch_size=4", "train.threads=1",
]  # fmt: skip


def run(*args, cwd=REPO):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("SEGUNCERT_DEBUG", None)
    return subprocess.run([sys.executable, str(TOOL), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def test_end_to_end_tiny_synthetic(tmp_path):
    out = tmp_path / "run"
    r = run("--config", "configs/synthetic_demo.yaml", "--out", str(out), *TINY)
    assert r.returncode == 0, r.stderr
    for name in ("best.json", "last.json", "log.csv", "config.yaml"):
        assert (out / name).is_file(), name
    assert len(list(out.glob("last.state.*.safetensors"))) == 1
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["data"]["synthetic_size"] == [32, 48] and saved["model"]["arch"] == "segnet_basic"
    assert len(list(csv.DictReader(open(out / "log.csv")))) == 1
    assert "done: 1 epochs" in r.stdout
    r = run("--config", "configs/synthetic_demo.yaml", "--out", str(out), "--resume", *TINY,
            "train.epochs=2")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "epoch 2/2" in r.stdout and "epoch 1/2" not in r.stdout
    r = run("--config", "configs/synthetic_demo.yaml", "--out", str(out), *TINY)
    assert "--resume" in one_line_exit_2(r) and "--overwrite" in r.stderr


def one_line_exit_2(r) -> str:
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def test_bad_config_key_is_one_line_exit_2(tmp_path):
    r = run("--config", "configs/synthetic_demo.yaml", "--out", str(tmp_path), "train.epoch=3")
    line = one_line_exit_2(r)
    assert "unknown config key 'train.epoch'" in line
    assert not any(tmp_path.iterdir())


def test_missing_data_root_is_one_line_exit_2(tmp_path):
    r = run("--config", "configs/camvid_unet_cpu.yaml", "--out", str(tmp_path / "r"),
            "--data-root", str(tmp_path / "no_such_dir"))  # fmt: skip
    assert "data root not found" in one_line_exit_2(r) and "no_such_dir" in r.stderr


def test_help_explains_flags():
    r = run("--help")
    assert r.returncode == 0
    for flag in ("--config", "--data-root", "--out", "--resume", "section.key=value"):
        assert flag in r.stdout


def test_overrides_may_come_between_and_after_the_flags():
    from seguncert.cli.train import parse_args

    args = parse_args(["train.epochs=2", "--config", "c.yaml", "model.width=4", "--out", "o",
                       "loss.aleatoric_samples=1", "--overwrite"])  # fmt: skip
    assert args.config == "c.yaml" and args.out == "o" and args.overwrite
    assert args.overrides == ["train.epochs=2", "model.width=4", "loss.aleatoric_samples=1"]
