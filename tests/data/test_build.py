from __future__ import annotations

import sys
import time
import types

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import Subset

from seguncert.config import config_from_dict
from seguncert.data.build import SYNTHETIC_WEIGHT_FRAMES, build_datasets
from seguncert.data.camvid import CamVidDataset, median_frequency_weights
from seguncert.data.common import CAMVID_CLASSES, IGNORE_INDEX
from seguncert.errors import ConfigError, DataError


def make_camvid(root, n=4, h=20, w=28):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        for i in range(n):
            cv2.imwrite(str(root / split / f"{i}.png"), rng.integers(0, 256, (h, w, 3), np.uint8))
            label = rng.integers(0, 12, (h, w)).astype(np.uint8)
            cv2.imwrite(str(root / f"{split}annot" / f"{i}.png"), label)


def make_depth(root, h=20, w=28):
    for split, scenes in (("train", ("a", "b")), ("val", ("c",))):
        for scene in scenes:
            folder = root / split / scene
            folder.mkdir(parents=True)
            for n in (1, 2):
                cv2.imwrite(str(folder / f"{n}.jpg"), np.full((h, w, 3), 90, np.uint8))
                cv2.imwrite(str(folder / f"{n}.png"), np.full((h, w), 51, np.uint8))  # 2 m


def cfg_for(**sections):
    return config_from_dict(sections)


def test_camvid_build_transforms_and_weights(tmp_path):
    make_camvid(tmp_path)
    cfg = cfg_for(data={"dataset": "camvid", "root": str(tmp_path), "crop": [16, 16]})
    train, val, meta = build_datasets(cfg)
    assert (len(train), len(val)) == (4, 4)
    t, v = train[0], val[0]
    assert t["image"].shape == (3, 16, 16) and "orig_size" not in t
    assert v["image"].shape == (3, 32, 32) and v["orig_size"].tolist() == [20, 28]
    assert (v["label"][20:] == IGNORE_INDEX).all()
    assert meta.task == "segmentation" and meta.class_names == list(CAMVID_CLASSES)
    raw = CamVidDataset(tmp_path, "train")
    np.testing.assert_allclose(meta.class_weights, median_frequency_weights(raw), atol=1e-6)


def test_sqrt_median_frequency_weights_are_the_square_roots(tmp_path):
    make_camvid(tmp_path)
    cfg = cfg_for(
        data={"dataset": "camvid", "root": str(tmp_path)},
        loss={"class_weights": "sqrt_median_frequency"},
    )
    _, _, meta = build_datasets(cfg)
    full = median_frequency_weights(CamVidDataset(tmp_path, "train"))
    assert (full != 1.0).any()  # the square root must change something to be seen
    np.testing.assert_allclose(meta.class_weights, np.sqrt(full), atol=1e-6)
    _, _, none = build_datasets(cfg_for(data={"dataset": "camvid", "root": str(tmp_path)},
                                        loss={"class_weights": "none"}))  # fmt: skip
    assert none.class_weights is None


def test_limits_and_weights_from_the_limited_set(tmp_path):
    make_camvid(tmp_path)
    cfg = cfg_for(
        data={"dataset": "camvid", "root": str(tmp_path), "limit_train": 2, "limit_val": 9}
    )
    train, val, meta = build_datasets(cfg)
    assert isinstance(train, Subset) and len(train) == 2 and len(val) == 4
    labels = [CamVidDataset(tmp_path).raw(i)["label"] for i in range(2)]
    np.testing.assert_allclose(meta.class_weights, median_frequency_weights(labels), atol=1e-6)
    with pytest.raises(ConfigError, match="data.limit_train"):
        build_datasets(cfg_for(data={"dataset": "camvid", "root": str(tmp_path), "limit_train": 0}))


def test_train_list_keeps_exactly_the_named_frames_and_their_weights(tmp_path):
    make_camvid(tmp_path, n=5)
    listed = tmp_path / "labelled.txt"
    listed.write_text("# round 1\n3\n1.png\n\n3\n")  # a name, a file name, a repeat
    cfg = cfg_for(data={"dataset": "camvid", "root": str(tmp_path), "train_list": str(listed)})
    train, _, meta = build_datasets(cfg)
    assert isinstance(train, Subset) and list(train.indices) == [1, 3]
    raw = CamVidDataset(tmp_path)
    assert [raw.frame_names()[i] for i in train.indices] == ["1", "3"]
    labels = [raw.raw(i)["label"] for i in (1, 3)]
    np.testing.assert_allclose(meta.class_weights, median_frequency_weights(labels), atol=1e-6)


def test_train_list_errors_name_the_problem(tmp_path):
    make_camvid(tmp_path)
    listed = tmp_path / "labelled.txt"
    base = {"dataset": "camvid", "root": str(tmp_path), "train_list": str(listed)}
    listed.write_text("1\nnot_a_frame\n")
    with pytest.raises(DataError, match="1 of 2 frames are not in the training split.*not_a_frame"):
        build_datasets(cfg_for(data=base))
    listed.write_text("# nothing\n")
    with pytest.raises(ConfigError, match="names no frames"):
        build_datasets(cfg_for(data=base))
    with pytest.raises(ConfigError, match="cannot read"):
        build_datasets(cfg_for(data={**base, "train_list": str(tmp_path / "missing.txt")}))
    listed.write_text("1\n")
    with pytest.raises(ConfigError, match="leave data.train_fraction"):
        build_datasets(cfg_for(data={**base, "train_fraction": 0.5}))
    with pytest.raises(ConfigError, match="camvid or depth"):
        build_datasets(cfg_for(data={"dataset": "synthetic", "synthetic_train": 4,
                                     "synthetic_val": 2, "train_list": str(listed)}))  # fmt: skip


def test_depth_frame_names_match_raw_names(tmp_path):
    from seguncert.data.depth import DepthDataset

    make_depth(tmp_path)
    ds = DepthDataset(tmp_path, "train")
    assert ds.frame_names() == [ds.raw(i)["name"] for i in range(len(ds))]


def test_no_weights_when_not_asked(tmp_path):
    make_camvid(tmp_path)
    cfg = cfg_for(data={"dataset": "camvid", "root": str(tmp_path)}, loss={"class_weights": "none"})
    assert build_datasets(cfg)[2].class_weights is None


def test_missing_root_messages(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as e:
        build_datasets(cfg_for(data={"dataset": "camvid", "root": str(missing)}))
    assert str(e.value) == f"data root not found: {missing} (set data.root or --data-root)"
    with pytest.raises(DataError, match="data root not set.*--data-root"):
        build_datasets(cfg_for(data={"dataset": "depth"}, model={"task": "depth"}))


def test_task_dataset_mismatch(tmp_path):
    make_camvid(tmp_path)
    with pytest.raises(ConfigError, match="model.task=depth"):
        build_datasets(cfg_for(data={"dataset": "camvid", "root": str(tmp_path)},
                               model={"task": "depth"}))  # fmt: skip
    with pytest.raises(ConfigError, match="num_classes"):
        build_datasets(cfg_for(data={"dataset": "camvid", "root": str(tmp_path)},
                               model={"num_classes": 5}))  # fmt: skip


def test_depth_build(tmp_path):
    make_depth(tmp_path)
    cfg = cfg_for(
        data={"dataset": "depth", "root": str(tmp_path), "max_depth": 8.0, "size": [16, 24]},
        model={"task": "depth"},
    )
    train, val, meta = build_datasets(cfg)
    assert (len(train), len(val)) == (4, 2)
    assert meta.task == "depth" and meta.class_weights is None and meta.max_depth == 8.0
    s = val[0]
    assert s["depth"].shape == (32, 32) and s["orig_size"].tolist() == [16, 24]
    torch.testing.assert_close(s["depth"][:16, :24], torch.full((16, 24), 2.0))
    assert s["valid"][:16, :24].all() and not s["valid"][16:].any()
    assert train[0]["depth"].shape == (16, 24)


class _FakeSynthetic:
    """Stands in for SyntheticStreetScenes to check what build_datasets asks of it."""

    calls: list = []
    rendered: list = []

    def __init__(self, n, size=(120, 160), seed=0, shift=None, severity=0, ood=False,
                 transform=None, cache=True):  # fmt: skip
        _FakeSynthetic.calls.append((n, size, seed))
        self.n, self.size, self.seed, self.transform = n, size, seed, transform

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        _FakeSynthetic.rendered.append(i)
        h, w = self.size
        label = np.full((h, w), (i + self.seed) % 3, np.int64)
        sample = {
            "image": np.zeros((h, w, 3), np.uint8),
            "label": label,
            "depth": np.full((h, w), 5.0, np.float32),
            "valid": np.ones((h, w), bool),
            "ood": np.zeros((h, w), bool),
            "name": f"s{i}",
        }
        return self.transform(sample) if self.transform else sample


def test_synthetic_arguments_and_weights(monkeypatch):
    fake = types.ModuleType("seguncert.data.synthetic")
    fake.SyntheticStreetScenes = _FakeSynthetic
    fake.MIN_DEPTH, fake.MAX_DEPTH = 0.25, 42.0
    monkeypatch.setitem(sys.modules, "seguncert.data.synthetic", fake)
    _FakeSynthetic.calls.clear()
    cfg = cfg_for(
        data={"synthetic_train": 6, "synthetic_val": 2, "synthetic_size": [24, 32],
              "synthetic_seed": 3},
        model={"task": "joint"},
    )  # fmt: skip
    train, val, meta = build_datasets(cfg)
    assert _FakeSynthetic.calls == [(6, (24, 32), 3), (2, (24, 32), 10_003)]
    assert meta.task == "joint" and (meta.min_depth, meta.max_depth) == (0.25, 42.0)
    # Labels (i + 3) % 3 over 6 frames: classes 0, 1, 2 twice each, all others absent.
    assert meta.class_weights[:3] == [1.0, 1.0, 1.0] and meta.class_weights[3:] == [0.0] * 8
    assert set(val[0]) == {"image", "label", "depth", "valid", "ood", "name", "orig_size"}
    assert train[0]["image"].shape == (3, 24, 32)


def test_real_synthetic_smoke():
    synthetic = pytest.importorskip("seguncert.data.synthetic")
    if not hasattr(synthetic, "SyntheticStreetScenes"):
        pytest.skip("SyntheticStreetScenes not available yet")
    cfg = cfg_for(
        data={"synthetic_train": 2, "synthetic_val": 1, "synthetic_size": [48, 64]},
        model={"task": "joint"},
    )
    train, val, meta = build_datasets(cfg)
    s = val[0]
    assert s["image"].shape == (3, 64, 64) and s["orig_size"].tolist() == [48, 64]
    assert {"label", "depth", "valid"} <= set(s) and len(meta.class_weights) == 11
    assert meta.max_depth == synthetic.MAX_DEPTH and meta.min_depth == synthetic.MIN_DEPTH


def test_real_camvid_build_weights_fast(camvid_root):
    start = time.process_time()
    cfg = cfg_for(data={"dataset": "camvid", "root": str(camvid_root), "cache": False})
    train, val, meta = build_datasets(cfg)
    seconds = time.process_time() - start
    assert (len(train), len(val)) == (367, 101)
    assert seconds < 5.0, f"build_datasets with CamVid weights took {seconds:.1f} CPU s"
    assert meta.class_weights[3] == pytest.approx(0.1369, rel=1e-3)  # Road
    assert meta.class_weights[6] == pytest.approx(3.5331, rel=1e-3)  # SignSymbol
    assert val[0]["image"].shape == (3, 384, 480)


def test_synthetic_weights_render_a_bounded_subset(monkeypatch):
    fake = types.ModuleType("seguncert.data.synthetic")
    fake.SyntheticStreetScenes = _FakeSynthetic
    fake.MIN_DEPTH, fake.MAX_DEPTH = 0.5, 80.0
    monkeypatch.setitem(sys.modules, "seguncert.data.synthetic", fake)
    _FakeSynthetic.rendered.clear()
    build_datasets(cfg_for(data={"synthetic_train": 1000, "synthetic_size": [4, 4]}))
    assert sorted(_FakeSynthetic.rendered) == list(range(SYNTHETIC_WEIGHT_FRAMES))
