"""Synthetic street scenes: determinism, sample interface, geometry, sequences, shifts, OOD."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from seguncert.data.synthetic import (
    MAX_DEPTH,
    FrameParams,
    SyntheticStreetScenes,
    render_frame,
    render_sequence,
)
from seguncert.data.synthetic_raster import FOCAL_Y, HORIZON, POLE, ROAD
from seguncert.data.synthetic_scene import CAMERA_HEIGHT, make_layout, scene_objects
from seguncert.data.synthetic_shifts import SHIFTS
from seguncert.errors import ConfigError, run_cli

REPO = Path(__file__).resolve().parents[2]
SIZE = (60, 80)


def test_deterministic_from_seed():
    a, b = render_frame(3, SIZE), render_frame(3, SIZE)
    for key in ("image", "label", "depth", "valid", "ood"):
        np.testing.assert_array_equal(a[key], b[key])
    assert a["name"] == b["name"]
    assert not np.array_equal(a["image"], render_frame(4, SIZE)["image"])
    d1, d2 = SyntheticStreetScenes(3, SIZE, seed=5), SyntheticStreetScenes(3, SIZE, seed=5)
    np.testing.assert_array_equal(d1[2]["image"], d2[2]["image"])  # any order of access
    np.testing.assert_array_equal(d1[1]["label"], d2[1]["label"])
    assert not np.array_equal(d1[1]["image"], SyntheticStreetScenes(3, SIZE, seed=6)[1]["image"])


@pytest.mark.parametrize("size", [(60, 80), (37, 53), (96, 64)])
def test_sample_interface(size):
    s = SyntheticStreetScenes(2, size)[0]
    assert set(s) == {"image", "label", "depth", "valid", "depth_valid", "ood", "name"}
    h, w = size
    assert s["image"].shape == (h, w, 3) and s["image"].dtype == np.uint8
    assert s["label"].shape == (h, w) and s["label"].dtype == np.int64
    assert s["depth"].shape == (h, w) and s["depth"].dtype == np.float32
    assert s["valid"].dtype == bool and s["ood"].dtype == bool
    assert isinstance(s["name"], str)
    assert set(np.unique(s["label"]).tolist()) <= set(range(11))  # no void without OOD
    assert not s["ood"].any() and s["valid"].all()
    assert (
        np.isfinite(s["depth"]).all() and (s["depth"] > 0).all() and s["depth"].max() <= MAX_DEPTH
    )


def test_every_class_appears_in_a_handful_of_frames():
    seen = set()
    for s in SyntheticStreetScenes(8, (120, 160), seed=0):
        seen |= set(np.unique(s["label"]).tolist())
    assert seen == set(range(11))


def test_sky_is_at_max_depth_and_ground_depth_follows_the_row():
    s = render_frame(1, (120, 160))
    label, depth = s["label"], s["depth"]
    assert (depth[label == 0] == MAX_DEPTH).all()
    road = label == ROAD
    both = road[:-1] & road[1:]  # a road pixel with a road pixel just below it
    upper, lower = depth[:-1][both], depth[1:][both]
    near = upper < MAX_DEPTH
    assert near.sum() > 100
    assert (lower[near] < upper[near]).all()  # lower rows are nearer
    # flat ground: depth = camera height * fy / (row - horizon), whatever the column
    rows = np.nonzero(road)[0]
    expect = CAMERA_HEIGHT * FOCAL_Y * 120 / (rows + 0.5 - HORIZON * 120)
    np.testing.assert_allclose(depth[road], np.minimum(expect, MAX_DEPTH), rtol=1e-4)


def test_sequence_is_coherent_and_moves_forward():
    frames = list(render_sequence(3, SIZE, seed=2, fps=10, speed=8.0))
    assert [f["name"] for f in frames] == [f"synthetic_seq2_{i:05d}" for i in range(3)]
    step = np.abs(frames[0]["image"].astype(float) - frames[1]["image"]).mean()
    other = next(iter(render_sequence(1, SIZE, seed=9)))
    unrelated = np.abs(frames[0]["image"].astype(float) - other["image"]).mean()
    assert step < 0.6 * unrelated
    # deterministic: the same sequence again
    again = next(iter(render_sequence(1, SIZE, seed=2)))
    np.testing.assert_array_equal(again["image"], frames[0]["image"])


def test_a_roadside_pole_gets_nearer():
    """Track a lamp post through two frames: its depth drops by speed / fps."""
    size, speed, fps = (120, 160), 8.0, 10.0
    for seed in range(12):
        lay = make_layout(FrameParams.from_seed(seed).seed, speed)
        t0 = FrameParams.from_seed(seed).t
        poles = [o for o in scene_objects(lay, speed * t0, t0) if o["kind"] == "pole"]
        poles = [o for o in poles if 10.0 < o["z"] < 25.0]
        if not poles:
            continue
        f0, f1 = list(render_sequence(2, size, seed=seed, fps=fps, speed=speed))
        hits = []
        for f, dz in ((f0, 0.0), (f1, speed / fps)):
            z = poles[0]["z"] - dz
            u = int(size[1] / 2 + 0.8 * size[1] * poles[0]["x"] / z)
            v = int(HORIZON * size[0] + FOCAL_Y * size[0] * (CAMERA_HEIGHT - 2.5) / z)
            if not (0 <= u < size[1] and 0 <= v < size[0]) or f["label"][v, u] != POLE:
                break
            hits.append((f["depth"][v, u], z))
        if len(hits) == 2:
            assert hits[0][0] == pytest.approx(hits[0][1], rel=1e-4)
            assert hits[1][0] == pytest.approx(hits[1][1], rel=1e-4)
            assert hits[1][0] < hits[0][0]
            return
    pytest.fail("no visible lamp post to track in 12 streets")


def _contrast(img):
    return img.astype(float).std()


def _sharpness(img):
    return np.abs(cv2.Laplacian(img.astype(np.float32), cv2.CV_32F)).mean()


@pytest.mark.parametrize("shift", SHIFTS)
def test_shift_changes_only_the_image_and_grows_with_severity(shift):
    clean = render_frame(7, SIZE)
    outs = [render_frame(7, SIZE, shift=shift, severity=k) for k in range(1, 6)]
    for o in outs:
        assert not np.array_equal(o["image"], clean["image"])
        np.testing.assert_array_equal(o["label"], clean["label"])
        np.testing.assert_array_equal(o["depth"], clean["depth"])
    imgs = [o["image"] for o in outs]
    if shift == "fog":
        score = [-_contrast(i) for i in imgs]  # contrast falls
    elif shift == "night":
        score = [-i.astype(float).mean() for i in imgs]  # brightness falls
    elif shift == "motion_blur":
        score = [-_sharpness(i) for i in imgs]  # detail falls
    else:
        score = [np.abs(i.astype(float) - clean["image"]).mean() for i in imgs]  # noise grows
    assert all(a < b for a, b in zip(score[:-1], score[1:], strict=True)), score


def test_ood_object_is_void_with_depth_and_only_when_asked():
    clean = SyntheticStreetScenes(4, SIZE, seed=1)
    ood = SyntheticStreetScenes(4, SIZE, seed=1, ood=True)
    for i in range(4):
        s = ood[i]
        assert s["ood"].any()
        assert (s["label"][s["ood"]] == 255).all() and (s["label"][~s["ood"]] != 255).all()
        np.testing.assert_array_equal(s["valid"], ~s["ood"])
        d = s["depth"][s["ood"]]
        assert 8.9 < d.min() and d.max() < 28.1 and np.ptp(d) < 1e-3  # one standing animal
        assert not clean[i]["ood"].any() and (clean[i]["label"] != 255).all()


def test_sequence_ood_frames_and_per_frame_shifts():
    frames = list(render_sequence(4, SIZE, seed=3, shifts=[{}, {"fog": 4}], ood_frames=[2, 3]))
    assert [bool(f["ood"].any()) for f in frames] == [False, False, True, True]
    d2, d3 = frames[2]["depth"][frames[2]["ood"]], frames[3]["depth"][frames[3]["ood"]]
    assert d3.mean() == pytest.approx(d2.mean() - 0.8, abs=1e-3)  # it stands still, we approach
    plain = list(render_sequence(2, SIZE, seed=3))
    np.testing.assert_array_equal(frames[0]["image"], plain[0]["image"])
    assert not np.array_equal(frames[1]["image"], plain[1]["image"])  # fogged frame
    np.testing.assert_array_equal(frames[1]["label"], plain[1]["label"])


def test_dataset_transform_and_errors():
    ds = SyntheticStreetScenes(2, SIZE, transform=lambda s: {"n": s["image"].shape})
    assert len(ds) == 2 and ds[1] == {"n": (60, 80, 3)}
    with pytest.raises(IndexError):
        ds[2]
    with pytest.raises(ConfigError, match="unknown synthetic shift 'rain'"):
        SyntheticStreetScenes(2, SIZE, shift="rain", severity=2)
    with pytest.raises(ConfigError, match="severity"):
        render_frame(0, SIZE, shift="fog", severity=7)
    with pytest.raises(ConfigError, match="needs a severity"):
        SyntheticStreetScenes(2, SIZE, shift="fog")
    with pytest.raises(ConfigError, match="at least 8 x 8"):
        render_frame(0, (4, 4))


def _run_tool(monkeypatch, *argv) -> int:
    from seguncert.cli import render_synthetic

    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: render_synthetic.main(list(argv)))
    return exit_info.value.code


def test_tool_writes_sheet_and_video(tmp_path, monkeypatch, capsys):
    sheet, video = tmp_path / "sheet.png", tmp_path / "seq.mp4"
    size = ("--size", "48", "64")
    assert _run_tool(monkeypatch, *size, "--out", str(sheet), "--seeds", "1", "2") == 0
    assert cv2.imread(str(sheet)).shape == (96, 256, 3)
    args = ("--video", str(video), "--frames", "4", "--fog", "2", "--ood")
    assert _run_tool(monkeypatch, *size, *args) == 0
    cap = cv2.VideoCapture(str(video))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 4 and not list(tmp_path.glob("*.tmp*"))
    assert _run_tool(monkeypatch, *size, "--video", str(video), "--frames", "0") == 2
    assert "error: --frames must be >= 1" in capsys.readouterr().err


def test_cached_frames_are_identical_and_not_shared():
    cached = SyntheticStreetScenes(2, (48, 64), seed=3)
    fresh = SyntheticStreetScenes(2, (48, 64), seed=3, cache=False)
    a = cached[1]
    a["image"] = None  # a caller replacing entries must not reach the cache
    for k, v in fresh[1].items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(cached[1][k], v)
    assert cached[1]["image"] is not None
