"""Shift-augmented calibration: fit a calibrator on clean frames *and* corrupted copies of them,
so that its temperature-like parameters see how confidence behaves under degraded inputs
(after Tomani et al., CVPR 2021, "Post-hoc calibration of neural networks under domain shift").

Corruptions are grouped into the four ImageNet-C families (:data:`FAMILIES`). Each calibration
frame gets, per family, one copy corrupted by a member of that family at a severity drawn
uniformly from 1..5, both deterministic in (seed, family, frame index). Held-out evaluation
leaves families out: a calibrator scored on a corruption of group G (:data:`HOLDOUT_GROUPS`,
noise+blur or weather+digital) was fitted on the clean frames plus the copies of the other
group's families only, so no corruption it is scored on, nor any of its family, was seen while
fitting. The calibrator a user deploys is fitted on all four
(:func:`seguncert.evaluate.calibration.fit_augmented` with no exclusion; ``evaluate.py
--calibrate KINDS --calibration-shift``).
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

from ..data.corruptions import CORRUPTIONS, corrupt

FAMILIES: dict[str, tuple[str, ...]] = {
    "noise": ("gaussian_noise", "shot_noise"),
    "blur": ("motion_blur", "defocus_blur", "zoom_blur"),
    "weather": ("fog", "rain", "snow", "darkness"),
    "digital": ("contrast", "jpeg", "pixelate"),
}
assert sorted(c for f in FAMILIES.values() for c in f) == sorted(CORRUPTIONS)
# Held-out groups for scoring: a calibrator scored on a corruption of one group was fitted
# without any family of that group (two groups: two extra fits instead of four).
HOLDOUT_GROUPS: dict[str, tuple[str, ...]] = {
    "noise+blur": ("noise", "blur"),
    "weather+digital": ("weather", "digital"),
}


def family_of(corruption: str) -> str:
    return next(f for f, names in FAMILIES.items() if corruption in names)


def holdout_group(corruption: str) -> str:
    family = family_of(corruption)
    return next(g for g, fams in HOLDOUT_GROUPS.items() if family in fams)


class FamilyCorruptions(torch.utils.data.Dataset):
    """Frame i of ``raw`` with one corruption of ``family`` at a random severity 1..5."""

    def __init__(self, raw, family: str, seed: int = 0, transform=None) -> None:
        self.raw, self.family, self.seed, self.transform = raw, family, int(seed), transform

    def choice(self, i: int) -> tuple[str, int]:
        """(corruption, severity) of frame i: a function of (seed, family, i) only."""
        key = (self.seed, zlib.crc32(self.family.encode()), int(i), 7)
        rng = np.random.default_rng(np.random.SeedSequence(key))
        names = FAMILIES[self.family]
        return names[int(rng.integers(len(names)))], int(rng.integers(1, 6))

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, i: int) -> dict:
        s = dict(self.raw[i])
        name, severity = self.choice(i)
        s["image"] = corrupt(s["image"], name, severity, self.seed + 1, i)
        return self.transform(s) if self.transform is not None else s
