"""tools/infer.py end to end, through its command line (subprocess), on tiny inputs."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from seguncert.config import ModelConfig
from seguncert.data.common import DatasetMeta
from seguncert.io.checkpoint import save_checkpoint
from seguncert.models.build import build_model
from seguncert.viz.overlays import legend_strip, title_height

REPO = Path(__file__).resolve().parents[2]
INFER = REPO / "tools" / "infer.py"
CLASSES = ["road", "car", "sky"]
PALETTE = [[128, 64, 128], [64, 0, 128], [128] * 3]


def run_infer(*args, cwd=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, str(INFER), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny untrained segmentation U-Net saved with the checkpoint API."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        arch="unet", encoder="resnet18", num_classes=3, decoder_channels=[16, 8, 8, 8, 8]
    )
    model = build_model(cfg)
    meta = DatasetMeta(class_names=CLASSES, palette=PALETTE)
    run = tmp_path_factory.mktemp("ckpt")
    cal = {"format": "seguncert.calibrator", "version": 1, "kind": "temperature",
           "task": "segmentation", "num_classes": 3, "params": {"tau": 1.5}}  # fmt: skip
    save_checkpoint(run, "best", model, meta=meta, config={"model": vars(cfg)}, calibration=cal)
    return run


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """5 frames of a moving gradient, 48x64, mp4v at 12 fps."""
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 12, (64, 48))
    for i in range(5):
        x = np.linspace(0, 255, 64)[None, :] + 20 * i
        img = np.stack([np.tile(x, (48, 1)) % 256] * 3, axis=-1).astype(np.uint8)
        vw.write(img)
    vw.release()
    return path


def read_video(path):
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            return frames, cap.get(cv2.CAP_PROP_FPS)
        frames.append(f)


def test_end_to_end_overlay_video_stats_and_sheet(tmp_path, ckpt, clip):
    out = tmp_path / "res" / "overlay.mp4"
    r = run_infer(
        "--checkpoint", ckpt, "--input", clip, "--out", out, "--mc-samples", 2,
        "--size", "64x96", "--batch", 2, "--frames-dir", tmp_path / "frames",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "frames/s" in r.stdout.strip().splitlines()[-1]
    frames, fps = read_video(out)
    assert len(frames) == 5 and fps == pytest.approx(12.0)
    # input | segmentation | aleatoric | epistemic, each 64x96, under a title strip
    legend_h = legend_strip(CLASSES, PALETTE, 4 * 96, 64).shape[0]  # below the panels
    assert frames[0].shape == (64 + title_height(64) + legend_h, 4 * 96, 3)
    with open(out.with_suffix(".csv")) as f:
        rows = list(csv.reader(f))
    assert rows[0][:4] == ["frame", "mean_aleatoric", "mean_epistemic", "frac_uncertain"]
    assert rows[0][4:] == [f"frac_{c}" for c in CLASSES]
    assert [int(r[0]) for r in rows[1:]] == list(range(5))
    for row in rows[1:]:
        vals = [float(v) for v in row[1:]]
        assert vals[0] > 0 and vals[1] >= 0 and 0 <= vals[2] <= 1
        assert sum(vals[3:]) == pytest.approx(1.0)
    assert (tmp_path / "res" / "overlay_sheet.png").is_file()
    assert len(list((tmp_path / "frames").glob("*.png"))) == 5
    assert not [p for p in (tmp_path / "res").iterdir() if p.name.startswith(".")]


def test_several_inputs_go_to_a_folder_with_fixed_scale(tmp_path, ckpt, clip):
    frames_dir = tmp_path / "seq"
    frames_dir.mkdir()
    for i in (1, 2, 10):
        cv2.imwrite(str(frames_dir / f"f{i}.png"), np.full((40, 56, 3), 20 * i, np.uint8))
    out = tmp_path / "many"
    r = run_infer(
        "--checkpoint", ckpt, "--input", clip, frames_dir, "--out", out, "--mc-samples", 2,
        "--scale", "fixed:0,1", "--layout", "grid", "--panels", "input,seg,epistemic",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "clip.csv",
        "clip.mp4",
        "clip_sheet.png",
        "seq.csv",
        "seq.mp4",
        "seq_sheet.png",
    ]
    frames, fps = read_video(out / "seq.mp4")
    assert len(frames) == 3 and fps == pytest.approx(10.0)  # frame folders default to 10 fps
    legend_h = legend_strip(CLASSES, PALETTE, 2 * 56, 40).shape[0]
    assert frames[0].shape == (2 * (40 + title_height(40)) + legend_h, 2 * 56, 3)


def write_zero_frame_avi(path):
    cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 32)).release()


def weights_of(run) -> Path:
    return run / json.loads((run / "best.json").read_text())["weights_file"]


def corrupt_weights(run):
    w = weights_of(run)
    w.write_bytes(w.read_bytes()[:-100])


def wrong_kind(run):
    side = json.loads((run / "best.json").read_text())
    side["kind"] = "classification"
    (run / "best.json").write_text(json.dumps(side))


@pytest.mark.parametrize(
    "case",
    ["missing", "unreadable", "zero_frames", "corrupt_ckpt", "wrong_kind", "proc", "under_file"],
)
def test_bad_input_exits_2_with_one_line_and_no_output(tmp_path, ckpt, clip, case):
    work = tmp_path / "work"
    work.mkdir()
    inp, out, ck = clip, work / "out" / "o.mp4", ckpt
    if case == "missing":
        inp = work / "nope.mp4"
    elif case == "unreadable":
        inp = work / "junk.mp4"
        inp.write_bytes(np.random.default_rng(1).bytes(3000))
    elif case == "zero_frames":
        inp = work / "zero.avi"
        write_zero_frame_avi(inp)
    elif case in ("corrupt_ckpt", "wrong_kind"):
        ck = work / "ck"
        ck.mkdir()
        for f in ckpt.iterdir():
            (ck / f.name).write_bytes(f.read_bytes())
        (corrupt_weights if case == "corrupt_ckpt" else wrong_kind)(ck)
    elif case == "proc":
        out = Path("/proc/x.mp4")
    else:
        (work / "afile").write_text("x")
        out = work / "afile" / "o.mp4"
    before = {p for p in work.rglob("*")}
    r = run_infer("--checkpoint", ck, "--input", inp, "--out", out, "--mc-samples", 2)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    named = {"missing": "nope.mp4", "unreadable": "junk.mp4", "zero_frames": "zero.avi",
             "corrupt_ckpt": weights_of(ckpt).name, "wrong_kind": "classification",
             "proc": "/proc/x.mp4", "under_file": "afile"}  # fmt: skip
    assert named[case] in lines[0]
    assert not out.exists()
    assert {p for p in work.rglob("*") if p.is_file()} == {p for p in before if p.is_file()}


def test_existing_outputs_are_kept_unless_overwrite(tmp_path, ckpt, clip):
    out = tmp_path / "o.mp4"
    args = ("--checkpoint", ckpt, "--input", clip, "--out", out, "--mc-samples", 1)
    assert run_infer(*args).returncode == 0
    before = out.stat().st_mtime_ns
    r = run_infer(*args)
    assert r.returncode == 2 and "already exists" in r.stderr and "--overwrite" in r.stderr
    assert out.stat().st_mtime_ns == before
    assert run_infer(*args, "--overwrite").returncode == 0


def test_a_huge_frame_is_refused_up_front_with_its_size(tmp_path, ckpt):
    """A 4000x3000 frame: the memory estimate refuses it before any inference, naming the
    size and a --size that fits (here the free memory is faked to 2 GB)."""
    big = tmp_path / "big.png"
    cv2.imwrite(str(big), np.zeros((3000, 4000, 3), np.uint8))
    env_probe = "import seguncert.inference.frames as f; f.available_bytes = lambda d: 2 << 30"
    code = f"{env_probe}; from seguncert.cli import run_tool; run_tool('infer')"
    args = ["--checkpoint", ckpt, "--input", big, "--out", tmp_path / "o.mp4", "--mc-samples", 2]
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                       text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=300)  # fmt: skip
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert "4000x3000" in line and "GB" in line and "--size" in line
    assert not (tmp_path / "o.mp4").exists()


def test_a_frame_the_codec_cannot_encode_is_refused_before_inference(tmp_path, ckpt):
    """mp4v cannot encode 4 x 2600 px wide rows: said up front with the pixel size."""
    wide = tmp_path / "wide.png"
    cv2.imwrite(str(wide), np.zeros((64, 2600, 3), np.uint8))
    r = run_infer("--checkpoint", ckpt, "--input", wide, "--out", tmp_path / "o.mp4")
    assert r.returncode == 2
    line = r.stderr.strip().splitlines()[-1]
    assert "10400x" in line and "--size" in line and "frames/s" not in r.stdout


def gradient_frame(i: int, h: int = 48, w: int = 64) -> np.ndarray:
    x = np.linspace(0, 255, w)[None, :] + 20 * i
    return np.stack([np.tile(x, (h, 1)) % 256] * 3, axis=-1).astype(np.uint8)


@pytest.fixture(scope="module")
def dense_ckpt(tmp_path_factory, ckpt):
    """The tiny checkpoint with a feature density fitted on gradient frames like the clip's."""
    from seguncert.data.transforms import normalize_image
    from seguncert.io.checkpoint import load_checkpoint
    from seguncert.uncertainty.feature_density import fit_feature_density, store_density

    run = tmp_path_factory.mktemp("dense")
    for f in ckpt.iterdir():
        (run / f.name).write_bytes(f.read_bytes())
    model, info = load_checkpoint(run)
    meta = info["meta"]
    frames = [gradient_frame(i) for i in range(8)]
    image = torch.stack([normalize_image(f, meta["mean"], meta["std"]) for f in frames])
    label = torch.from_numpy(np.stack([(f[..., 0] // 86).astype(np.int64) for f in frames]))
    density = fit_feature_density(model, [{"image": image, "label": label}], 3)
    store_density(info["sidecar_path"], info, density)
    return run


def test_a_fitted_density_adds_the_novelty_panel_and_columns(tmp_path, dense_ckpt):
    """Default panels gain 'novelty' (a fifth panel); the CSV's max_novelty is higher on a
    frame with a noise patch the density never saw than on the gradient frames it was fit on."""
    seq = tmp_path / "seq"
    seq.mkdir()
    plain, patched = gradient_frame(1), gradient_frame(1)
    patched[12:36, 20:44] = np.random.default_rng(0).integers(0, 256, (24, 24, 3))
    cv2.imwrite(str(seq / "a.png"), plain)
    cv2.imwrite(str(seq / "b.png"), patched)
    out = tmp_path / "o.mp4"
    r = run_infer("--checkpoint", dense_ckpt, "--input", seq, "--out", out, "--mc-samples", 2)
    assert r.returncode == 0, r.stderr
    frames, _ = read_video(out)
    assert frames[0].shape[1] == 5 * 64
    with open(out.with_suffix(".csv")) as f:
        rows = list(csv.DictReader(f))
    assert float(rows[1]["max_novelty"]) > float(rows[0]["max_novelty"]) + 1.0
    assert all(float(r["max_novelty"]) >= float(r["mean_novelty"]) for r in rows)


def test_the_novelty_panel_without_a_density_is_one_line(tmp_path, ckpt, clip):
    out = tmp_path / "o.mp4"
    r = run_infer("--checkpoint", ckpt, "--input", clip, "--out", out, "--panels",
                  "input,novelty", "--mc-samples", 1)  # fmt: skip
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "--fit-density" in lines[0], r.stderr
    assert not out.exists()


def test_net_size_runs_the_network_smaller_and_keeps_the_frame_size(tmp_path, ckpt, clip):
    out = tmp_path / "small.mp4"
    base = ("--checkpoint", ckpt, "--input", clip, "--mc-samples", 2, "--size", "64x96")
    r = run_infer(*base, "--out", out, "--net-size", "32x48")
    assert r.returncode == 0, r.stderr
    ref = tmp_path / "native.mp4"
    assert run_infer(*base, "--out", ref, "--net-size", "native").returncode == 0
    small, _ = read_video(out)
    native, _ = read_video(ref)
    assert len(small) == 5 and small[0].shape == native[0].shape
    assert not np.array_equal(small[2], native[2])  # the maps did change
    r = run_infer(*base, "--out", tmp_path / "bad.mp4", "--net-size", "big")
    assert r.returncode == 2 and r.stderr.strip().startswith("error: --net-size must look like")
    assert not (tmp_path / "bad.mp4").exists()


def test_the_default_net_size_is_the_checkpoints_training_size():
    from seguncert.cli.infer import net_size

    assert net_size("train", {"config": {"data": {"size": [180, 240]}}}) == (180, 240)
    assert net_size("train", {"config": {"model": {}}}) is None  # no training size: native
    assert net_size("native", {"config": {"data": {"size": [180, 240]}}}) is None
    assert net_size("90x120", {}) == (90, 120)
