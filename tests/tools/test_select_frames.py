"""tools/select_frames.py end to end on a tiny untrained U-Net and a few synthetic frames: the
CSV / PNG outputs, the resume after a kill, refusal to overwrite, one-line errors."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from seguncert.cli.select_frames import main
from seguncert.config import ModelConfig
from seguncert.data.common import DatasetMeta
from seguncert.errors import SeguncertError
from seguncert.io.checkpoint import save_checkpoint
from seguncert.models.build import build_model

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "select_frames.py"
CLASSES = ["road", "car", "sky"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny untrained U-Net with decoder dropout, class weights and a 32x48 training size."""
    torch.manual_seed(0)
    cfg = ModelConfig(arch="unet", encoder="resnet18", num_classes=3,
                      decoder_channels=[16, 8, 8, 8, 8], dropout="decoder")  # fmt: skip
    meta = DatasetMeta(class_names=CLASSES, palette=[[128, 64, 128], [64, 0, 128], [128] * 3],
                       class_weights=[0.5, 3.0, 1.0])  # fmt: skip
    run = tmp_path_factory.mktemp("ckpt")
    config = {"model": vars(cfg), "data": {"size": [32, 48]}}
    save_checkpoint(run, "best", build_model(cfg), meta=meta, config=config)
    return run


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A 20-frame 48x64 clip at 10 fps (a moving gradient) and a folder of 6 noise frames."""
    root = tmp_path_factory.mktemp("inputs")
    vw = cv2.VideoWriter(str(root / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    for i in range(20):
        x = np.linspace(0, 255, 64)[None, :] * (1 + i / 5) + 9 * i
        vw.write(np.stack([np.tile(x, (48, 1)) % 256] * 3, axis=-1).astype(np.uint8))
    vw.release()
    folder = root / "seq"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        img = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8) // (i + 1)
        cv2.imwrite(str(folder / f"f{i}.png"), img)
    return root / "clip.mp4", folder


def select_frames(out, ckpt, inputs, *extra):
    args = ["--checkpoint", ckpt, "--input", *inputs, "--out", out, "--mc-samples", 2,
            "--budget", 4, *extra]  # fmt: skip
    return main([str(a) for a in args])


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_picks_csv_pngs_sheet_and_log(tmp_path, ckpt, inputs, capsys):
    out = tmp_path / "sel"
    assert select_frames(out, ckpt, inputs, "--stride", 2) == 0
    said = capsys.readouterr().out
    assert "scored 13 frame(s)" in said and "picked 4 of 13" in said  # 10 of the clip + 3
    log = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert [h["stride"] for h in log[0]["inputs"]] == [2, 2]
    assert [h["size"] for h in log[0]["inputs"]] == [[32, 48], [32, 48]]  # the training size
    by_key = {(r["source"], r["index"]): r for r in log[1:]}
    assert sorted(by_key) == [("clip", i) for i in range(0, 20, 2)] + [
        ("seq", i) for i in (0, 2, 4)
    ]
    rows = read_csv(out / "picks.csv")
    assert list(rows[0])[:8] == ["rank", "source", "frame", "time_s", "path", "png",
                                 "acquisition", "score"]  # fmt: skip
    assert list(rows[0])[-3:] == [f"mi_{c}" for c in CLASSES]
    assert [int(r["rank"]) for r in rows] == [1, 2, 3, 4]
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0
    for r in rows:
        logged = by_key[(r["source"], int(r["frame"]))]
        assert float(r["bald"]) == pytest.approx(logged["scores"]["bald"], rel=1e-5)
        png = cv2.imread(str(out / r["png"]))
        if r["source"] == "clip":
            assert float(r["time_s"]) == pytest.approx(int(r["frame"]) / 10)
            assert png.shape == (48, 64, 3) and r["path"].endswith("clip.mp4")
        else:
            assert r["time_s"] == "" and png.shape == (40, 56, 3)
            assert Path(r["path"]).name == f"f{r['frame']}.png"
    same = {}
    for r in rows:  # default gap: 3 x the stride = 6 frames within one input
        for f in same.get(r["source"], []):
            assert abs(int(r["frame"]) - f) >= 6
        same.setdefault(r["source"], []).append(int(r["frame"]))
    assert sorted(p.name for p in (out / "picks").iterdir()) == sorted(
        Path(r["png"]).name for r in rows
    )
    sheet = cv2.imread(str(out / "contact_sheet.png"))
    assert sheet is not None and sheet.shape[1] > 4 * 48  # 2 tiles per row of frame | MI map
    assert not [p for p in out.rglob(".*")]  # no temporary files left


def test_a_killed_run_resumes_to_the_same_log_and_picks(tmp_path, ckpt, inputs, capsys):
    out = tmp_path / "sel"
    assert select_frames(out, ckpt, inputs) == 0  # default stride: 10 for the 10 fps clip
    full = (out / "scores.jsonl").read_bytes()
    picks = (out / "picks.csv").read_bytes()
    lines = full.split(b"\n")
    assert len(lines) == 1 + 2 + 6 + 1  # header, clip frames 0 and 10, the 6 folder frames
    # a kill in the middle of scoring: no picks yet, the log cut inside its 4th record
    for p in ("picks.csv", "contact_sheet.png"):
        (out / p).unlink()
    shutil.rmtree(out / "picks")
    cut = len(b"\n".join(lines[:4])) + 1 + len(lines[4]) // 2
    (out / "scores.jsonl").write_bytes(full[:cut])
    capsys.readouterr()
    assert select_frames(out, ckpt, inputs) == 0
    said = capsys.readouterr().out
    assert "resuming: 3 frame(s)" in said and "scored 5 frame(s)" in said
    assert (out / "scores.jsonl").read_bytes() == full
    assert (out / "picks.csv").read_bytes() == picks


def test_existing_picks_are_refused_unless_overwrite(tmp_path, ckpt, inputs, capsys):
    out = tmp_path / "sel"
    clip = inputs[:1]
    assert select_frames(out, ckpt, clip, "--stride", 3) == 0
    before = (out / "picks.csv").read_bytes()
    with pytest.raises(SeguncertError, match="picks.csv already exists.*--overwrite"):
        select_frames(out, ckpt, clip, "--stride", 3)
    assert (out / "picks.csv").read_bytes() == before
    # --overwrite with another acquisition re-selects from the log; stale PNGs go
    capsys.readouterr()
    assert select_frames(out, ckpt, clip, "--stride", 3, "--acquisition", "random",
                         "--overwrite", "--min-gap", "0") == 0  # fmt: skip
    assert "scored 0 frame(s)" in capsys.readouterr().out
    rows = read_csv(out / "picks.csv")
    assert {r["acquisition"] for r in rows} == {"random"}
    assert sorted(p.name for p in (out / "picks").iterdir()) == sorted(
        Path(r["png"]).name for r in rows
    )
    again = read_csv(out / "picks.csv")  # the same ranking for the same seed
    assert select_frames(out, ckpt, clip, "--stride", 3, "--acquisition", "random",
                         "--overwrite", "--min-gap", "0") == 0  # fmt: skip
    assert read_csv(out / "picks.csv") == again
    # scores made with other settings: refused, the log untouched
    log = (out / "scores.jsonl").read_bytes()
    (out / "picks.csv").unlink()
    (out / "contact_sheet.png").unlink()
    shutil.rmtree(out / "picks")
    with pytest.raises(SeguncertError, match="mc_samples=2, not 3"):
        select_frames(out, ckpt, clip, "--stride", 3, "--mc-samples", 3)
    assert (out / "scores.jsonl").read_bytes() == log


def test_a_budget_larger_than_the_pool_takes_all_and_says_so(tmp_path, ckpt, inputs, capsys):
    out = tmp_path / "sel"
    assert select_frames(out, ckpt, inputs[1:], "--budget", 50) == 0  # the last --budget wins
    said = capsys.readouterr().out
    assert "budget 50 is more than the 2 eligible" in said and "taking all 2" in said
    assert len(read_csv(out / "picks.csv")) == 2  # 6 frames, gap 3: e.g. 0 and 3


@pytest.mark.parametrize("case", ["missing", "unreadable"])
def test_a_bad_input_is_one_line_exit_2_and_no_output(tmp_path, ckpt, case):
    bad = tmp_path / ("nope.mp4" if case == "missing" else "junk.mp4")
    if case == "unreadable":
        bad.write_bytes(np.random.default_rng(1).bytes(3000))
    out = tmp_path / "sel"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    args = ["--checkpoint", ckpt, "--input", bad, "--budget", 2, "--out", out]
    r = subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True,
                       text=True, env=env, timeout=300)  # fmt: skip
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and bad.name in lines[0], r.stderr
    assert not out.exists()
