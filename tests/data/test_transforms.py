from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from seguncert.data.common import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD
from seguncert.data.transforms import (
    build_eval_transform,
    build_train_transform,
    denormalize,
    normalize_image,
)

COLOURS = np.array([(20 * k + 10, 240 - 20 * k, (60 * k) % 256) for k in range(11)], np.uint8)


def block_sample(h=48, w=64, block=8, seed=0) -> dict:
    """Blocks of random classes; the image colour and the depth encode each pixel's class."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 12, (h // block, w // block))
    label = np.kron(coarse, np.ones((block, block), np.int64))
    label[label == 11] = IGNORE_INDEX
    image = np.zeros((h, w, 3), np.uint8)
    known = label != IGNORE_INDEX
    image[known] = COLOURS[label[known]]
    depth = np.where(known, 1.0 + label, 0.0).astype(np.float32)
    ood = np.zeros((h, w), bool)
    ood[:block, :block] = True
    label[ood] = IGNORE_INDEX
    image[ood] = 0
    depth[ood] = 0.0
    valid = label != IGNORE_INDEX
    return {"image": image, "label": label, "depth": depth, "valid": valid, "ood": ood, "name": "x"}


def interior(label: np.ndarray) -> np.ndarray:
    """Pixels whose 3x3 neighbourhood has one label (away from bilinear-blended edges); the
    output border is excluded, its neighbours outside the crop are unknown."""
    p = np.pad(label, 1, constant_values=-1)
    same = np.ones(label.shape, bool)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            same &= p[dy : dy + label.shape[0], dx : dx + label.shape[1]] == label
    return same


@pytest.mark.parametrize("seed", range(12))
def test_train_transform_keeps_image_label_depth_aligned(seed):
    raw = block_sample(seed=seed)
    t = build_train_transform(crop=(40, 56), scale_range=(0.6, 1.8), color_jitter=0, seed=seed)
    out = t(raw)
    assert out["image"].shape == (3, 40, 56) and out["image"].dtype == torch.float32
    assert out["label"].dtype == torch.int64 and out["depth"].dtype == torch.float32
    assert out["valid"].dtype == torch.bool and out["ood"].dtype == torch.bool
    assert out["name"] == "x" and "orig_size" not in out
    label, depth = out["label"].numpy(), out["depth"].numpy()
    image = denormalize(out["image"]).astype(int)
    known = label != IGNORE_INDEX
    check = known & interior(label)
    assert check.sum() > 200
    assert np.abs(image[check] - COLOURS[label[check]]).max() <= 2
    # Valid and ood follow the label; depth is (1 + label) / s with one s per sample.
    np.testing.assert_array_equal(out["valid"].numpy(), known)
    assert not known[out["ood"].numpy()].any()
    ratio = depth[known] * 1.0 / (1.0 + label[known])
    assert np.ptp(ratio) < 1e-5 and 1 / 1.8 - 1e-6 <= ratio[0] <= 1 / 0.6 + 1e-6
    assert (depth[~known] == 0).all()


def test_depth_scale_consistent_nearest_and_switchable():
    raw = block_sample()
    out = build_train_transform(scale_range=(2.0, 2.0), hflip=False, color_jitter=0, seed=1)(raw)
    depth, label = out["depth"].numpy(), out["label"].numpy()
    assert out["depth"].shape == (48, 64)  # crop=None: back to the sample's own size
    # Zoomed in by 2: every depth is a stored depth halved, never a blend of two depths.
    assert set(np.unique(depth * 2)) <= set(np.unique(raw["depth"]))
    np.testing.assert_allclose(depth[label != IGNORE_INDEX] * 2, 1 + label[label != 255])
    kept = build_train_transform(
        scale_range=(2.0, 2.0), hflip=False, color_jitter=0, depth_scale_consistent=False, seed=1
    )(raw)
    np.testing.assert_allclose(kept["depth"].numpy(), depth * 2)


def test_pad_when_smaller_than_crop():
    raw = block_sample(h=16, w=24)
    out = build_train_transform(crop=(32, 40), scale_range=(1, 1), hflip=False, color_jitter=0)(raw)
    assert out["label"].shape == (32, 40)
    pad = np.ones((32, 40), bool)
    pad[:16, :24] = False
    np.testing.assert_array_equal(out["label"].numpy()[:16, :24], raw["label"])
    assert (out["label"].numpy()[pad] == IGNORE_INDEX).all()
    assert not out["valid"].numpy()[pad].any() and not out["ood"].numpy()[pad].any()
    assert (out["depth"].numpy()[pad] == 0).all()
    assert out["image"][:, torch.from_numpy(pad)].abs().max() < 0.02  # mean colour ~ 0


def test_hflip_and_colour_jitter_only_touch_what_they_should():
    raw = block_sample()
    t = build_train_transform(scale_range=(1, 1), hflip=True, color_jitter=0.4, seed=3)
    flips = set()
    for _ in range(12):
        label = t(raw)["label"].numpy()
        if np.array_equal(label, raw["label"]):
            flips.add(False)
        else:
            np.testing.assert_array_equal(label, raw["label"][:, ::-1])
            flips.add(True)
    assert flips == {False, True}
    t = build_train_transform(scale_range=(1, 1), hflip=False, color_jitter=0.4, seed=0)
    outs = [t(raw) for _ in range(4)]
    for out in outs:
        np.testing.assert_array_equal(out["label"].numpy(), raw["label"])
        np.testing.assert_array_equal(out["depth"].numpy(), raw["depth"])
    assert any(not np.array_equal(denormalize(o["image"]), raw["image"]) for o in outs)


def test_missing_keys_stay_absent():
    raw = block_sample()
    out = build_train_transform(crop=(32, 32))({"image": raw["image"], "name": "n"})
    assert set(out) == {"image", "name"}
    assert set(build_eval_transform()({"image": raw["image"]})) == {"image", "orig_size"}


def test_seeded_train_transform_is_reproducible():
    raw = block_sample()
    a = build_train_transform(crop=(32, 32), seed=7)(raw)
    b = build_train_transform(crop=(32, 32), seed=7)(raw)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])


class _Repeat(torch.utils.data.Dataset):
    def __init__(self, transform):
        self.raw, self.transform = block_sample(), transform

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return self.transform(self.raw)["label"]


def test_dataloader_workers_draw_different_augmentations():
    t = build_train_transform(crop=(24, 24), scale_range=(0.7, 1.6), seed=0)
    loader = DataLoader(_Repeat(t), batch_size=1, num_workers=2)
    labels = [b[0] for b in loader]  # items 0, 2 from worker 0; 1, 3 from worker 1
    assert not torch.equal(labels[0], labels[1])


def test_eval_transform_pads_to_multiple_of_32():
    raw = block_sample(h=40, w=56)
    out = build_eval_transform(pad_to=32)(raw)
    assert out["image"].shape == (3, 64, 64)
    assert out["orig_size"].tolist() == [40, 56] and out["orig_size"].dtype == torch.int64
    torch.testing.assert_close(out["image"][:, :40, :56], normalize_image(raw["image"]))
    assert out["image"][:, 40:].abs().max() == 0 and out["image"][:, :, 56:].abs().max() == 0
    np.testing.assert_array_equal(out["label"][:40, :56].numpy(), raw["label"])
    assert (out["label"][40:] == IGNORE_INDEX).all() and (out["label"][:, 56:] == 255).all()
    assert not out["valid"][40:].any() and not out["ood"][:, 56:].any()
    assert (out["depth"][40:] == 0).all() and out["name"] == "x"
    exact = build_eval_transform()(block_sample(h=64, w=32))
    assert exact["image"].shape == (3, 64, 32) and exact["orig_size"].tolist() == [64, 32]


def test_normalize_denormalize_roundtrip():
    img = np.random.default_rng(0).integers(0, 256, (5, 7, 3)).astype(np.uint8)
    x = normalize_image(img, IMAGENET_MEAN, IMAGENET_STD)
    assert x.shape == (3, 5, 7) and x.dtype == torch.float32
    expected = (img[1, 2, 0] / 255 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    assert abs(float(x[0, 1, 2]) - expected) < 1e-5
    np.testing.assert_array_equal(denormalize(x), img)
    np.testing.assert_array_equal(denormalize(x[None].repeat(2, 1, 1, 1))[1], img)
