"""Shift-augmented calibration data: corruption families, deterministic copies, and the
leave-family-out fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seguncert.data.corruptions import CORRUPTIONS
from seguncert.evaluate import calibration
from seguncert.evaluate.shift_families import (
    FAMILIES,
    HOLDOUT_GROUPS,
    FamilyCorruptions,
    family_of,
    holdout_group,
)


class Frames(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        g = np.random.default_rng(0)
        self.images = [g.integers(0, 256, (24, 32, 3), dtype=np.uint8) for _ in range(n)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": np.zeros((24, 32), np.int64)}


def test_every_corruption_has_exactly_one_family():
    names = [c for members in FAMILIES.values() for c in members]
    assert sorted(names) == sorted(CORRUPTIONS) and len(names) == len(set(names))
    assert family_of("fog") == "weather" and family_of("jpeg") == "digital"
    groups = [f for fams in HOLDOUT_GROUPS.values() for f in fams]
    assert sorted(groups) == sorted(FAMILIES)
    assert holdout_group("shot_noise") == holdout_group("zoom_blur") != holdout_group("snow")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_copies_are_deterministic_and_from_their_family(family):
    raw = Frames(6)
    a, b = FamilyCorruptions(raw, family, seed=3), FamilyCorruptions(raw, family, seed=3)
    choices = [a.choice(i) for i in range(len(raw))]
    assert all(name in FAMILIES[family] and 1 <= sev <= 5 for name, sev in choices)
    for i in range(len(raw)):
        x, y = a[i]["image"], b[i]["image"]
        assert x.dtype == np.uint8 and x.shape == raw[i]["image"].shape
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0]["image"], raw[0]["image"])  # severity >= 1 changes pixels
    other = FamilyCorruptions(raw, family, seed=4)
    assert [other.choice(i) for i in range(len(raw))] != choices or not np.array_equal(
        other[0]["image"], a[0]["image"]
    )


def test_fit_augmented_leaves_the_excluded_family_out(monkeypatch):
    seen = {}

    def fake_fit(kind, pixels, crops, weights, cfg):
        seen["pixels"], seen["crops"] = pixels, crops
        return kind

    monkeypatch.setattr(calibration, "_fit", fake_fit)
    clean = (["c0", "c1"], ["k0", "k1"])
    families = {f: ([f"{f}_p"], [f"{f}_c"]) for f in FAMILIES}
    calibration.fit_augmented("vector", clean, families, None, None, exclude=("blur",))
    assert seen["pixels"] == ["c0", "c1", "noise_p", "weather_p", "digital_p"]
    assert seen["crops"] == ["k0", "k1", "noise_c", "weather_c", "digital_c"]
    calibration.fit_augmented("vector", clean, families, None, None)
    assert len(seen["pixels"]) == 2 + len(FAMILIES)
