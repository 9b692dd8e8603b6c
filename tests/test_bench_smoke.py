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


def test_video_pareto_quick_scores_every_setting_and_picks_a_default(tmp_path, camvid_root):
    # A fresh CamVid-shaped checkpoint trained "at" 64x96: the bench shrinks the 360x480 val
    # frames to that size, checks its prefix trick against MCSampler and marks the fronts.
    import torch

    from seguncert.config import Config
    from seguncert.data.common import DatasetMeta
    from seguncert.io.checkpoint import save_checkpoint
    from seguncert.models.build import build_model

    torch.manual_seed(0)
    cfg = Config()
    cfg.model.num_classes, cfg.model.decoder_channels = 11, [16, 8, 8, 8, 8]
    cfg.data.size = [64, 96]
    meta = DatasetMeta(
        class_names=[f"c{i}" for i in range(11)], palette=[[i * 20] * 3 for i in range(11)]
    )
    save_checkpoint(tmp_path, "best", build_model(cfg.model), meta=meta, config=cfg)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, str(REPO / "bench" / "video_pareto.py"), "--checkpoint", str(tmp_path),
           "--data-root", str(camvid_root), "--quick", "--frames", "2", "--timing-frames", "1",
           "--net-sizes", "train", "--repeats", "1", "--warmup", "0", "--json"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:] + r.stdout[-2000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])["checkpoints"]["decoder"]
    names = {"T1@train", "T2@train", "T4@train", "temporal2@train", "temporal2+flow@train"}
    assert set(res["rows"]) == names
    for row in res["rows"].values():
        assert row["fps"] > 0 and 0 <= row["ece"] <= 1 and 0 <= row["auroc_epistemic"] <= 1
    assert res["rows"]["T1@train"]["auroc_epistemic"] == 0.5  # one sample: MI is 0 everywhere
    assert all(front and set(front) <= names for front in res["fronts"].values())
    assert res["recommended"] in res["keeps_t20"] and "T4@train" in res["keeps_t20"]
    assert res["keeps_t20_native"] == []  # no native reference in this run
