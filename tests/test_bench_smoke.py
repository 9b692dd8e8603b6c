"""Benchmarks in their quick modes. bench/video_fps.py drives tools/infer.py as a user does
(several torch threads, reruns into the same output), so a change to the tool's output lines
or refusals breaks this test instead of the benchmark; bench/mc_inference.py is the issue-13
target command."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_video_fps_quick_runs_per_frame_and_temporal():
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONPATH=str(REPO))
    cmd = [sys.executable, str(REPO / "bench" / "video_fps.py"), "--quick", "--samples", "1",
           "--temporal", "2", "--frames", "3", "--size", "64x96", "--json"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:] + r.stdout[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(out["fps"]) == {"T1", "temporal_K2_T20"}
    assert all(v > 0 for v in out["fps"].values())
    assert all(0 < out["fps_total"][k] <= out["fps"][k] * 1.05 for k in out["fps"])


def test_mc_inference_quick_reports_every_preset_with_equal_maps():
    # The issue-13 target command's output, at the quick size: a ratio per preset and method,
    # and the memory-budget check (two chunk sizes give the same maps).
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, str(REPO / "bench" / "mc_inference.py"), "--quick", "--no-tu",
           "--threads", "1", "--json"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:] + r.stdout[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    presets = {"classifier", "decoder", "central", "all"}
    assert set(out["ratio_t20"]) == presets
    assert all(set(v) == {"naive", "batched", "ours"} for v in out["ratio_t20"].values())
    assert all(v["ours"] > 0 for v in out["ratio_t20"].values())
    assert all(out["memory_budget_check"][p]["ok"] for p in presets)
    assert "classifier_le_1.5x" in out["targets"]
