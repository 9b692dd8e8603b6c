from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from seguncert.data.depth import DepthDataset, decode_depth, split_scenes
from seguncert.errors import DataError

H, W = 8, 10


def write_frame(scene: Path, n: int, depth_m: np.ndarray, encoding: str, png_image=False):
    scene.mkdir(parents=True, exist_ok=True)
    image = np.zeros((H, W, 3), np.uint8)
    image[..., 2] = 20 * n  # blue channel (RGB) carries the frame number (JPEG-safe steps)
    cv2.imwrite(str(scene / f"{n}.{'png' if png_image else 'jpg'}"), image[..., ::-1])
    if encoding == "npy":
        np.save(scene / f"{n}.npy", depth_m.astype(np.float32))
        return
    scale = {"nyu8": 255 / 10, "mm16": 1000.0, "kitti16": 256.0}[encoding]
    dtype = np.uint8 if encoding == "nyu8" else np.uint16
    cv2.imwrite(str(scene / f"{n}.png"), np.round(depth_m * scale).astype(dtype))


def ramp(lo=0.5, hi=8.0) -> np.ndarray:
    return np.linspace(lo, hi, H * W, dtype=np.float32).reshape(H, W)


def test_decode_depth_each_encoding():
    np.testing.assert_allclose(decode_depth(np.array([[0, 255]], np.uint8), "nyu8"), [[0, 10]])
    np.testing.assert_allclose(decode_depth(np.array([[0, 1500]], np.uint16), "mm16"), [[0, 1.5]])
    np.testing.assert_allclose(decode_depth(np.array([[0, 512]], np.uint16), "kitti16"), [[0, 2]])
    out = decode_depth(np.array([[np.nan, 2.5, np.inf]]), "npy")
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[0, 2.5, 0]])
    with pytest.raises(DataError, match="16-bit"):
        decode_depth(np.zeros((2, 2), np.uint8), "mm16")
    with pytest.raises(DataError, match="8-bit"):
        decode_depth(np.zeros((2, 2), np.uint16), "nyu8")
    with pytest.raises(DataError, match="unknown depth encoding"):
        decode_depth(np.zeros((2, 2)), "exr")


@pytest.mark.parametrize("encoding", ["nyu8", "mm16", "kitti16", "npy"])
def test_dataset_reads_each_encoding(tmp_path, encoding):
    depth = ramp()
    depth[0, 0] = 0.0  # no measurement
    write_frame(tmp_path / "train" / "room", 1, depth, encoding)
    s = DepthDataset(tmp_path, "train", encoding=encoding, min_depth=0.6, max_depth=7.0)[0]
    assert s["name"] == "room/1" and s["image"].shape == (H, W, 3)
    assert s["depth"].dtype == np.float32 and s["valid"].dtype == bool
    step = {"nyu8": 10 / 255, "mm16": 1e-3, "kitti16": 1 / 256, "npy": 1e-6}[encoding]
    inside = (depth >= 0.6 + step) & (depth <= 7.0 - step)
    np.testing.assert_allclose(s["depth"][inside], depth[inside], atol=step / 2 + 1e-6)
    assert s["valid"][inside].all()
    # Outside the range: clamped into it and invalid; missing: 0 and invalid.
    out = (depth > 0) & ((depth < 0.6 - step) | (depth > 7.0 + step))
    assert out.any() and not s["valid"][out].any()
    assert ((s["depth"][out] == np.float32(0.6)) | (s["depth"][out] == np.float32(7.0))).all()
    assert s["depth"][0, 0] == 0 and not s["valid"][0, 0]


def test_png_image_with_npy_depth(tmp_path):
    write_frame(tmp_path / "val" / "road", 3, ramp(), "npy", png_image=True)
    s = DepthDataset(tmp_path, "val", encoding="npy")[0]
    assert s["name"] == "road/3" and (s["image"][..., 2] == 60).all()


def test_frames_sorted_numerically(tmp_path):
    for n in (10, 2, 1):
        write_frame(tmp_path / "train" / "a", n, ramp(), "nyu8")
    ds = DepthDataset(tmp_path)
    assert [ds[i]["name"] for i in range(3)] == ["a/1", "a/2", "a/10"]
    assert [round(ds[i]["image"][0, 0, 2] / 20) for i in range(3)] == [1, 2, 10]


def test_split_scenes_deterministic_and_disjoint():
    names = [f"scene_{i}" for i in range(10)]
    train, val = split_scenes(names, 0.2, seed=0)
    assert len(val) == 2 and set(train) | set(val) == set(names) and not set(train) & set(val)
    assert split_scenes(list(reversed(names)), 0.2, seed=0) == (train, val)
    assert split_scenes(["a", "b"], 0.2)[1] != [] and split_scenes(["a"], 0.2) == (["a"], [])
    assert {tuple(split_scenes(names, 0.2, seed=s)[1]) for s in range(5)} != {tuple(val)}


def test_layout_without_split_folders_splits_by_scene(tmp_path):
    for scene in ("s0", "s1", "s2", "s3", "s4"):
        for n in (1, 2):
            write_frame(tmp_path / scene, n, ramp(), "nyu8")
    train = DepthDataset(tmp_path, "train")
    val = DepthDataset(tmp_path, "val")
    scenes = lambda ds: {ds[i]["name"].split("/")[0] for i in range(len(ds))}  # noqa: E731
    assert len(train) + len(val) == 10 and len(val) == 2
    assert not scenes(train) & scenes(val)
    assert scenes(val) == set(split_scenes(["s0", "s1", "s2", "s3", "s4"])[1])
    with pytest.raises(DataError, match="no split folders"):
        DepthDataset(tmp_path, "test")


def test_scenes_filter_and_resize(tmp_path):
    for scene in ("a", "b"):
        write_frame(tmp_path / "train" / scene, 1, ramp(), "nyu8")
    ds = DepthDataset(tmp_path, scenes=["b"], size=(4, 5))
    assert len(ds) == 1 and ds[0]["name"] == "b/1"
    s = ds[0]
    assert s["depth"].shape == (4, 5) and s["valid"].shape == (4, 5)
    stored = set(
        np.round(decode_depth(np.round(ramp() * 25.5).astype(np.uint8), "nyu8"), 5).ravel()
    )
    assert set(np.round(s["depth"].ravel(), 5)) <= stored  # nearest: no blended depths
    with pytest.raises(DataError, match="scene"):
        DepthDataset(tmp_path, scenes=["zzz"])


def test_bad_inputs(tmp_path):
    with pytest.raises(DataError, match="data root not found"):
        DepthDataset(tmp_path / "missing")
    write_frame(tmp_path / "train" / "a", 1, ramp(), "nyu8")
    with pytest.raises(DataError, match="split folder not found"):
        DepthDataset(tmp_path, "val")
    # Wrong-size depth map.
    cv2.imwrite(str(tmp_path / "train" / "a" / "1.png"), np.ones((H, W + 2), np.uint8))
    with pytest.raises(DataError, match=r"depth .*a/1\.png is 12x8 but its image is 10x8"):
        DepthDataset(tmp_path)[0]
    # Image without depth, depth without image.
    write_frame(tmp_path / "train" / "b", 1, ramp(), "nyu8")
    (tmp_path / "train" / "b" / "1.png").unlink()
    with pytest.raises(DataError, match=r"no depth for image .*b/1\.jpg"):
        DepthDataset(tmp_path)
    (tmp_path / "train" / "b" / "1.jpg").unlink()
    cv2.imwrite(str(tmp_path / "train" / "b" / "1.png"), np.ones((H, W), np.uint8))
    with pytest.raises(DataError, match=r"no image for frame .*b/1\.png"):
        DepthDataset(tmp_path)


def test_wrong_encoding_for_files(tmp_path):
    write_frame(tmp_path / "train" / "a", 1, ramp(), "nyu8")
    with pytest.raises(DataError, match=r"1\.png.*16-bit"):
        DepthDataset(tmp_path, encoding="mm16")[0]


def test_real_nyu_frames(nyu_root):
    train = DepthDataset(nyu_root, "train")
    val = DepthDataset(nyu_root, "val")
    assert (len(train), len(val)) == (1236, 321)
    train_scenes = {name.split("/")[0] for name, _, _ in train.frames}
    assert not train_scenes & {name.split("/")[0] for name, _, _ in val.frames}
    for i in (0, 1, 2):
        s = val[i]
        assert s["image"].shape == (480, 640, 3) and s["depth"].shape == (480, 640)
        d = s["depth"][s["valid"]]
        assert s["valid"].mean() > 0.99 and 0.5 < np.median(d) < 5.0  # README: medians ~1.8 m
