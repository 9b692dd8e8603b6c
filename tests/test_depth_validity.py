"""One definition of depth validity: the AbsRel logged while training and the one the
evaluation reports are over the same pixels (the datasets' ``depth_valid``)."""

from __future__ import annotations

import json

import pytest
import torch

from seguncert.config import config_from_dict
from seguncert.evaluate.data import split_dataset
from seguncert.evaluate.run import EvalConfig, evaluate_checkpoint
from seguncert.io.checkpoint import load_checkpoint
from seguncert.train.fit import fit

TINY_DEPTH = {
    "data": {
        "dataset": "synthetic",
        "synthetic_train": 6,
        "synthetic_val": 3,
        "synthetic_size": [32, 48],
        "scale_range": [1.0, 1.0],
        "hflip": False,
        "color_jitter": 0.0,
    },
    "model": {"arch": "segnet_basic", "width": 8, "task": "depth", "dropout": "none"},
    "loss": {"depth": "laplace", "class_weights": "none"},
    "train": {"epochs": 1, "batch_size": 3, "threads": 1},
}


@pytest.mark.parametrize("task", ["depth", "joint"])
def test_logged_and_evaluated_abs_rel_agree(tmp_path, task):
    raw = json.loads(json.dumps(TINY_DEPTH))
    raw["model"]["task"] = task
    cfg = config_from_dict(raw)
    summary = fit(cfg, tmp_path / "run")
    logged = summary["last_metrics"]["abs_rel"]
    model, info = load_checkpoint(tmp_path / "run" / "last.json")
    ds = split_dataset(info, None, "val")
    loader = torch.utils.data.DataLoader(ds, batch_size=2)
    m = evaluate_checkpoint(
        model, info, loader, tmp_path / "eval", EvalConfig(mc_samples=1, examples=0, progress=False)
    )
    # no dropout: the MC mean is the deterministic network, so the numbers must be equal
    assert m["depth"]["abs_rel"] == pytest.approx(logged, rel=1e-5)
    assert m["depth"]["count"] == summary["last_metrics"]["count"]
