import numpy as np
import pytest
import torch

from seguncert.data.ood_objects import KINDS, make_object, make_sprite
from seguncert.data.ood_paste import CAM_HEIGHT, OODPasteDataset, ground_scale, paste_ood
from seguncert.data.transforms import build_eval_transform
from seguncert.errors import ConfigError, DataError

ROAD = 3


def _frame(seed=0, h=120, w=160):
    """Sky, a building band, a road trapezoid-ish block with a parked car and a void patch on
    it, pavement on both sides."""
    g = np.random.default_rng(seed)
    label = np.full((h, w), 4, np.int64)
    label[:40] = 0
    label[40:55] = 1
    label[55:, 20:140] = ROAD
    label[60:75, 100:125] = 8  # a car on the road
    label[100:104, 30:40] = 255
    image = np.clip(g.normal(100, 8, (h, w, 3)), 0, 255).astype(np.uint8)
    image[label == 0] = (150, 180, 220)
    return image, label


@pytest.mark.parametrize("kind", list(KINDS))
def test_sprites_soft_rim_solid_core_deterministic(kind):
    for seed in range(3):
        s = make_sprite(kind, np.random.default_rng(seed), height_px=40)
        a = s.alpha
        assert a.dtype == np.float32 and s.rgb.shape == a.shape + (3,)
        assert a.min() >= 0.0 and a.max() <= 1.0
        assert s.rgb.min() >= 0.0 and s.rgb.max() <= 1.0
        assert (a == 1.0).sum() >= 20  # a solid core
        assert ((a > 0) & (a < 1)).sum() >= 0.5 * (a.shape[0] + a.shape[1])  # a soft rim
        assert 0.05 < s.height_m < 3.5 and 0 < s.ground <= a.shape[0] + 3
        again = make_sprite(kind, np.random.default_rng(seed), height_px=40)
        assert np.array_equal(a, again.alpha) and np.array_equal(s.rgb, again.rgb)


def test_render_scale_and_unknown_kind():
    obj = make_object("box", np.random.default_rng(0))
    small, big = obj.render(40.0), obj.render(80.0)
    rows = [np.flatnonzero((s.alpha > 0.5).any(1)).size for s in (small, big)]
    assert abs(rows[1] - 2 * rows[0]) <= 2
    assert small.height_m == pytest.approx(big.height_m, abs=2 / 40)
    with pytest.raises(ConfigError, match="kind"):
        make_object("traffic_cone", np.random.default_rng(0))


def test_paste_labels_and_masks():
    image, label = _frame()
    for seed in range(6):
        r = paste_ood(image, label, np.random.default_rng(seed), n_objects=2)
        ood, alpha = r["ood"], r["alpha"]
        assert r["boxes"] and ood.any()
        assert (label[ood] == ROAD).all()  # objects cover former road only
        assert np.array_equal(ood, alpha > 0.5)
        assert np.array_equal(r["label"], np.where(alpha > 0, 255, label))
        rim = (alpha > 0) & ~ood
        assert rim.any() and (r["label"][rim] == 255).all()
        assert np.array_equal(r["image"][:40], image[:40])  # the sky is never touched
        for b in r["boxes"]:
            x0, y0, x1, y1 = b["box"]
            assert ood[y0:y1, x0:x1].any() and b["kind"] in KINDS
        covered = np.zeros_like(ood)
        for b in r["boxes"]:
            x0, y0, x1, y1 = b["box"]
            covered[y0:y1, x0:x1] = True
        assert not (ood & ~covered).any()


def test_paste_deterministic_and_seed_dependent():
    image, label = _frame()
    a = paste_ood(image, label, np.random.default_rng(7))
    b = paste_ood(image, label, np.random.default_rng(7))
    c = paste_ood(image, label, np.random.default_rng(8))
    assert all(np.array_equal(a[k], b[k]) for k in ("image", "label", "ood", "alpha"))
    assert a["boxes"] == b["boxes"]
    assert not np.array_equal(a["ood"], c["ood"])


def test_frame_without_road_is_unchanged():
    image, label = _frame()
    label = np.where(label == ROAD, 4, label)
    r = paste_ood(image, label, np.random.default_rng(0), n_objects=3)
    assert np.array_equal(r["image"], image) and np.array_equal(r["label"], label)
    assert not r["ood"].any() and r["boxes"] == []
    with pytest.raises(DataError, match="uint8"):
        paste_ood(image.astype(np.float32), label, np.random.default_rng(0))


def test_objects_lower_in_the_frame_are_larger():
    assert ground_scale(100.0, 50.0) == pytest.approx(50.5 / CAM_HEIGHT)
    assert ground_scale(40.0, 50.0) == 0.0
    image, label = _frame()
    rows, heights = [], []
    for seed in range(30):
        for b in paste_ood(image, label, np.random.default_rng(seed), n_objects=2)["boxes"]:
            rows.append(b["contact"][0])
            heights.append(b["box"][3] - b["box"][1])
            assert 7 <= heights[-1] <= 0.4 * 120 + 2
    rows, heights = np.array(rows), np.array(heights)
    low = rows > np.median(rows)
    assert heights[low].mean() > 1.3 * heights[~low].mean()
    assert np.corrcoef(rows, heights)[0, 1] > 0.3


class _Frames:
    """A raw dataset of identical synthetic frames."""

    def __init__(self, n=3):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        image, label = _frame()
        return {"image": image, "label": label, "valid": label != 255, "name": f"f{i}"}


def test_dataset_deterministic_index_dependent_and_transform():
    ds = OODPasteDataset(_Frames(), seed=3, n_objects=(1, 2))
    a, b, c = ds[1], ds[1], ds[2]
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["ood"], b["ood"])
    assert not np.array_equal(a["ood"], c["ood"])  # same frame, other index
    assert np.array_equal(ds[-1]["ood"], c["ood"])
    other = OODPasteDataset(_Frames(), seed=4)[1]
    assert not np.array_equal(a["ood"], other["ood"])
    assert a["name"] == "f1_ood3" and a["ood"].any()
    assert np.array_equal(a["valid"], a["label"] != 255) and not (a["valid"] & a["ood"]).any()
    t = OODPasteDataset(_Frames(), seed=3, transform=build_eval_transform(pad_to=32))[1]
    assert t["ood"].dtype == torch.bool and tuple(t["ood"].shape) == (128, 160)
    assert torch.equal(t["ood"][:120], torch.from_numpy(a["ood"]))
    assert not t["ood"][120:].any()
    with pytest.raises(IndexError):
        ds[3]
    with pytest.raises(ConfigError, match="n_objects"):
        OODPasteDataset(_Frames(), n_objects=(2, 1))
    with pytest.raises(DataError, match="raw samples"):
        OODPasteDataset([{"image": torch.zeros(3, 4, 4), "label": np.zeros((4, 4))}])[0]


@pytest.mark.realdata
def test_paste_on_real_camvid_frames(camvid_root):
    from seguncert.data.camvid import CamVidDataset

    base = CamVidDataset(camvid_root, "val", size=(180, 240), cache=False)
    ds = OODPasteDataset(base, seed=0, n_objects=(1, 2))
    for i in range(3):
        s, raw = ds[i], base[i]
        assert s["image"].shape == (180, 240, 3) and s["ood"].any()
        assert (raw["label"][s["ood"]] == ROAD).all()
        assert (s["label"][s["ood"]] == 255).all()
        assert not np.array_equal(s["image"], raw["image"])


def test_shadow_of_a_sprite_whose_footprint_rows_are_empty():
    """A thin top-heavy sprite (solid only above its contact band) once crashed the shadow
    (IndexError on val frame shapes); it must darken under its columns and not fail."""
    import numpy as np

    from seguncert.data.ood_objects import Sprite
    from seguncert.data.ood_paste import _shadow

    alpha = np.zeros((20, 10), np.float32)
    alpha[0:4, 3:7] = 1.0  # solid only in the top rows
    sprite = Sprite("pole", np.ones((20, 10, 3), np.float32), alpha, 19.0, 1.0, 10.0)
    img = np.full((40, 40, 3), 0.5, np.float32)
    _shadow(img, np.zeros((40, 40), np.float32), sprite, 10, 10)
    assert img.min() < 0.5 and np.isfinite(img).all()
    empty = Sprite(
        "none", np.ones((5, 5, 3), np.float32), np.zeros((5, 5), np.float32), 4.0, 1.0, 1.0
    )
    before = img.copy()
    _shadow(img, np.zeros((40, 40), np.float32), empty, 0, 0)
    np.testing.assert_array_equal(img, before)
