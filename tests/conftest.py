"""Shared fixtures. Real-data tests read a few frames from ../shared/datasets (beside the
checkout) or from $SEGUNCERT_DATASETS, and are skipped with a stated reason where it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def datasets_root() -> Path:
    env = os.environ.get("SEGUNCERT_DATASETS")
    return Path(env) if env else REPO.parent / "shared" / "datasets"


@pytest.fixture(autouse=True)
def _small_torch():
    # Two cores here and on CI: keep each test on one thread so tests don't oversubscribe.
    torch.set_num_threads(1)
    yield


@pytest.fixture
def camvid_root() -> Path:
    root = datasets_root() / "camvid"
    if not (root / "train").is_dir():
        pytest.skip(f"real CamVid not found at {root} (set SEGUNCERT_DATASETS)")
    return root


@pytest.fixture
def nyu_root() -> Path:
    root = datasets_root() / "nyu-depth-mini"
    if not (root / "train").is_dir():
        pytest.skip(f"nyu-depth-mini not found at {root} (set SEGUNCERT_DATASETS)")
    return root
