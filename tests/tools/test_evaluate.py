"""tools/evaluate.py end to end: a tiny checkpoint from tools/train.py, evaluated by subprocess."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.evaluate.test_evaluation import SEG_FILES

REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO / "tools" / "train.py"
EVALUATE = REPO / "tools" / "evaluate.py"
TINY = [
    "data.synthetic_train=4",
    "data.synthetic_val=3",
    "data.synthetic_size=[64,64]",
    "train.epochs=1",
    "train.batch_size=2",
    "train.max_minutes=null",
    "train.threads=1",
    "model.arch=segnet_basic",
    "model.width=8",
    "mc.samples=2",
]


def run(args, cwd):
    return subprocess.run(
        [sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    cfg = REPO / "configs" / "synthetic_demo.yaml"
    r = run([TRAIN, "--config", cfg, "--out", root / "run", *TINY], cwd=root)
    assert r.returncode == 0, r.stderr[-2000:]
    return root / "run"


def test_evaluate_end_to_end(checkpoint, tmp_path):
    out = tmp_path / "eval"
    r = run(
        [
            EVALUATE,
            "--checkpoint",
            checkpoint,
            "--out",
            out,
            "--mc-samples",
            "2",
            "--limit",
            "3",
            "--calibrate",
            "temperature",
            "--examples",
            "2",
            "--no-progress",
            "--device",
            "cpu",
        ],
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    files = {p.name for p in out.iterdir()}
    assert SEG_FILES <= files
    m = json.loads((out / "metrics.json").read_text())
    # frames 0-1 calibrate (the first half of 3, rounded), frame 2 is scored
    assert m["num_images"] == 1 and m["mc_samples"] == 2 and m["split"] == "val"
    sidecar = json.loads((checkpoint / "best.json").read_text())
    assert sidecar["calibration"]["kind"] == "temperature"
    assert len(m["per_class_iou"]) == 11 and m["calibration"].startswith("temperature tau=")
    assert sidecar["calibration_fit"]["frames"] == 2
    # the printed summary reports the numbers in metrics.json
    miou = re.search(r"mIoU ([\d.]+)%", r.stdout)
    ece = re.search(r"ECE ([\d.]+)%", r.stdout)
    assert miou and float(miou.group(1)) == pytest.approx(100 * m["miou"], abs=0.006)
    assert ece and float(ece.group(1)) == pytest.approx(100 * m["ece"], abs=0.006)
    assert str(out) in r.stdout
    r = run([EVALUATE, "--checkpoint", checkpoint, "--out", out, "--limit", "1"], cwd=tmp_path)
    assert r.returncode == 2 and "--overwrite" in r.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--checkpoint", "{tmp}/missing"], "checkpoint not found"),
        (["--checkpoint", "{ckpt}", "--data-root", "{tmp}/nodata"], "data root not found"),
    ],
)
def test_user_errors_exit_2_with_one_line(checkpoint, tmp_path, args, message):
    args = [a.format(tmp=tmp_path, ckpt=checkpoint) for a in args]
    r = run([EVALUATE, *args, "--out", tmp_path / "o"], cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not (tmp_path / "o").exists()


def test_help_explains_every_flag(tmp_path):
    r = run([EVALUATE, "--help"], cwd=tmp_path)
    assert r.returncode == 0
    for flag in (
        "--checkpoint",
        "--data-root",
        "--split",
        "--mc-samples",
        "--out",
        "--batch-size",
        "--limit",
        "--bins",
        "--calibrate",
        "--calibration-split",
        "--calibration-fraction",
        "--noise-samples",
        "--overwrite",
        "--memory-budget-mb",
        "--device",
    ):
        assert flag in r.stdout
    assert r.stdout.count("(default") >= 5


def test_a_checkpoint_of_another_task_is_named_as_such(tmp_path):
    """A segmentation checkpoint pointed at depth data: the message names the mismatch."""
    root = tmp_path / "fake_nyu"
    (root / "train").mkdir(parents=True)
    (root / "val").mkdir()
    cfg = REPO / "configs" / "camvid_unet_cpu.yaml"
    tiny = ["data.size=[32,32]", "model.decoder_channels=[8,8,8,8,8]", "train.epochs=1",
            "train.threads=1", "data.limit_train=2", "data.limit_val=1"]  # fmt: skip
    camvid = REPO.parent / "shared" / "datasets" / "camvid"
    if not camvid.is_dir():
        pytest.skip("needs ../shared/datasets/camvid")
    r = run([TRAIN, "--config", cfg, "--out", tmp_path / "seg", "--data-root", camvid, *tiny],
            cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    r = run([EVALUATE, "--checkpoint", tmp_path / "seg", "--data-root", root, "--out",
             tmp_path / "o"], cwd=tmp_path)  # fmt: skip
    assert r.returncode == 2
    line = r.stderr.strip().splitlines()[-1]
    assert "segmentation model trained on data.dataset=camvid" in line and "fake_nyu" in line


def test_out_under_a_file_fails_before_any_work(checkpoint, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = run([EVALUATE, "--checkpoint", checkpoint, "--out", blocker / "eval"], cwd=tmp_path)
    assert r.returncode == 2 and "is a file, not a folder" in r.stderr
    assert "evaluate" not in r.stdout  # no evaluation ran


def test_only_the_evaluated_split_is_needed(tmp_path):
    """A data root with val/ and valannot/ only (no train/) evaluates."""
    camvid = REPO.parent / "shared" / "datasets" / "camvid"
    if not camvid.is_dir():
        pytest.skip("needs ../shared/datasets/camvid")
    root = tmp_path / "valonly"
    root.mkdir()
    for d in ("val", "valannot"):
        (root / d).mkdir()
        for f in sorted((camvid / d).iterdir())[:2]:
            (root / d / f.name).symlink_to(f)
    cfg = REPO / "configs" / "camvid_unet_cpu.yaml"
    tiny = ["data.size=[32,32]", "model.decoder_channels=[8,8,8,8,8]", "train.epochs=1",
            "train.threads=1", "data.limit_train=2", "data.limit_val=1"]  # fmt: skip
    r = run([TRAIN, "--config", cfg, "--out", tmp_path / "seg", "--data-root", camvid, *tiny],
            cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    r = run([EVALUATE, "--checkpoint", tmp_path / "seg", "--data-root", root, "--out",
             tmp_path / "o", "--mc-samples", "2", "--no-progress"], cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["num_images"] == 2


def m_calibration(out):
    return json.loads((out / "metrics.json").read_text())["calibration"].split()[0]


def test_shift_novelty_and_html_sections(checkpoint, tmp_path):
    """--calibrate + --shift + --ood-paste in one evaluation: every calibrator under every
    corruption and severity, novelty per map, both in metrics.json and report.html."""
    out = tmp_path / "eval"
    r = run([EVALUATE, "--checkpoint", checkpoint, "--out", out, "--mc-samples", "2",
             "--limit", "3", "--calibrate", "temperature", "--calibration-shift",
             "--shift", "gaussian_noise,fog", "--severities", "1,3", "--ood-paste", "0",
             "--no-progress", "--examples", "1"],
            cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    shift = json.loads((out / "shift.json").read_text())
    settings = {(x["corruption"], x["severity"]) for x in shift["rows"]}
    assert settings == {("clean", 0), ("gaussian_noise", 1), ("gaussian_noise", 3), ("fog", 1),
                        ("fog", 3)}  # fmt: skip
    assert {x["calibrator"] for x in shift["rows"]} == {
        "identity",
        "temperature",
        "temperature+shift",
    }
    sidecar = json.loads((checkpoint / "best.json").read_text())
    assert sidecar["calibration_fit"]["shift_augmented"] is True
    # the stored calibrator is the shift-augmented refit, not the clean one
    assert m_calibration(out) == sidecar["calibration"]["kind"] == "temperature"
    noisy = [x for x in shift["rows"] if x["corruption"] == "gaussian_noise"]
    assert all(0 <= x["ece"] <= 1 for x in noisy)
    m = json.loads((out / "metrics.json").read_text())
    assert {x["map"] for x in m["novelty"]["table"]} >= {"max_prob", "entropy", "epistemic"}
    assert m["novelty"]["n_ood"] > 0
    assert m["shift"]["severities"] == [1, 3] and (out / "shift.png").stat().st_size > 1000
    html = (out / "report.html").read_text()
    assert "Under corruption" in html and "Novelty detection" in html


def test_an_ensemble_folder_is_one_checkpoint(tmp_path):
    cfg = REPO / "configs" / "synthetic_demo.yaml"
    r = run([TRAIN, "--config", cfg, "--out", tmp_path / "ens", "--members", "2", *TINY],
            cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "ens" / "member_1" / "best.json").is_file()
    r = run([EVALUATE, "--checkpoint", tmp_path / "ens", "--out", tmp_path / "e",
             "--mc-samples", "2", "--limit", "2", "--no-progress"], cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert m["members"] == 2 and "epistemic_members" in m["uncertainty"]
