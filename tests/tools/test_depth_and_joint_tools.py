"""Depth and joint checkpoints through the three tools: train -> evaluate -> infer (subprocess).

Depth trains on a few real nyu-depth-mini frames; the joint model on synthetic street scenes.
Sizes are tiny: this checks the wiring (files, keys, panels, frame counts), not accuracy.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "tools"
FAST = ["train.epochs=1", "train.batch_size=4", "train.threads=1", "train.val_every=1"]


def tool(name: str, *args) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(TOOLS / f"{name}.py"), *map(str, args)], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, f"{name}: {r.stderr[-1500:]}"
    return r


def frames(video: Path) -> tuple[int, int, int]:
    cap = cv2.VideoCapture(str(video))
    n, w, h = 0, int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    while cap.read()[0]:
        n += 1
    cap.release()
    return n, h, w


@pytest.mark.realdata
def test_depth_checkpoint_trains_evaluates_and_runs_on_frames(tmp_path, nyu_root):
    run = tmp_path / "nyu"
    tool("train", "--config", "configs/nyu_unet_cpu.yaml", "--data-root", nyu_root, "--out", run,
         "data.size=[64,80]", "data.limit_train=8", "data.limit_val=4", *FAST)  # fmt: skip
    info = json.loads((run / "best.json").read_text())
    assert info["meta"]["task"] == "depth" and info["model_spec"]["depth_dist"] == "laplace"

    tool("evaluate", "--checkpoint", run, "--data-root", nyu_root, "--limit", 3,
         "--mc-samples", 3, "--out", tmp_path / "eval", "--no-progress")  # fmt: skip
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for key in ("abs_rel", "rmse", "log10", "delta1", "ause_rmse", "nll"):
        assert key in m["depth"], key
    assert (tmp_path / "eval" / "sparsification.png").stat().st_size > 1000

    scene = sorted(p for p in (nyu_root / "val").iterdir() if p.is_dir())[0]
    clip = tmp_path / "clip"
    clip.mkdir()
    for i, jpg in enumerate(sorted(scene.glob("*.jpg"))[:3]):
        (clip / f"f{i}.jpg").write_bytes(jpg.read_bytes())
    out = tmp_path / "depth.mp4"
    tool("infer", "--checkpoint", run, "--input", clip, "--out", out, "--mc-samples", 2,
         "--size", "64x80")  # fmt: skip
    n, h, w = frames(out)
    assert n == 3 and w > 3 * 80  # input | depth | aleatoric σ | epistemic σ side by side
    rows = list(csv.DictReader(open(tmp_path / "depth.csv")))
    assert len(rows) == 3


def test_joint_checkpoint_reports_both_tasks(tmp_path):
    run = tmp_path / "joint"
    tool("train", "--config", "configs/synthetic_joint.yaml", "--out", run,
         "data.synthetic_train=8", "data.synthetic_val=4", "data.synthetic_size=[64,96]",
         "loss.aleatoric_samples=2", *FAST)  # fmt: skip
    info = json.loads((run / "best.json").read_text())
    assert info["meta"]["task"] == "joint"

    tool("evaluate", "--checkpoint", run, "--mc-samples", 2, "--out", tmp_path / "eval",
         "--no-progress")  # fmt: skip
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert "miou" in m and "abs_rel" in m["depth"]

    clip = tmp_path / "clip"
    tool("render_synthetic", "--help")  # the renderer tool is there for users
    from seguncert.data.synthetic import render_sequence

    clip.mkdir()
    for i, s in enumerate(render_sequence(4, size=(64, 96), seed=1)):
        cv2.imwrite(str(clip / f"{i}.png"), cv2.cvtColor(s["image"], cv2.COLOR_RGB2BGR))
    out = tmp_path / "joint.mp4"
    tool("infer", "--checkpoint", run, "--input", clip, "--out", out, "--mc-samples", 2)
    n, h, w = frames(out)
    assert n == 4 and w > 3 * 96  # input | segmentation | depth | epistemic
