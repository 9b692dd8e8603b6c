"""Properties every streaming metric shares: merge == whole, constant state, all-reduce, I/O."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
from hypothesis import given, settings
from hypothesis import strategies as st

from seguncert.metrics import (
    CalibrationMetrics,
    ConfusionMatrix,
    DepthMetrics,
    DepthNLL,
    PAvPU,
    Sparsification,
    UncertaintyQuality,
)

C = 4


def _seg_batch(seed: int, b: int = 4, h: int = 9, w: int = 10) -> dict:
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(2 * torch.randn(b, C, h, w, generator=g), dim=1)
    target = torch.randint(0, C, (b, h, w), generator=g)
    target[torch.rand(b, h, w, generator=g) < 0.1] = 255
    pred = probs.argmax(1)
    valid = target != 255
    ent = -(probs * probs.log()).sum(1)
    return {
        "probs": probs,
        "target": target,
        "pred": pred,
        "valid": valid,
        "correct": pred == target,
        "maps": {"entropy": ent, "var": ent.square() * 3},
    }


def _depth_batch(seed: int, b: int = 4, h: int = 9, w: int = 10) -> dict:
    g = torch.Generator().manual_seed(seed)
    target = 0.5 + 8 * torch.rand(b, h, w, generator=g, dtype=torch.float64)
    var = 0.01 + torch.rand(b, h, w, generator=g, dtype=torch.float64)
    pred = (target + var.sqrt() * torch.randn(b, h, w, generator=g, dtype=torch.float64)).abs()
    return {
        "pred": pred,
        "target": target,
        "valid": torch.rand(b, h, w, generator=g) > 0.1,
        "var": var,
        "maps": {"var": var},
    }


# name -> (constructor, batch maker, update)
METRICS = {
    "confusion": (
        lambda: ConfusionMatrix(C),
        _seg_batch,
        lambda m, d: m.update(d["pred"], d["target"]),
    ),
    "calibration": (
        lambda: CalibrationMetrics(C, chunk_pixels=50),
        _seg_batch,
        lambda m, d: m.update(d["probs"], d["target"]),
    ),
    "quality": (
        lambda: UncertaintyQuality(["entropy", "var"], ranges={"entropy": (0, math.log(C))}),
        _seg_batch,
        lambda m, d: m.update(d["maps"], d["correct"], d["valid"]),
    ),
    "pavpu": (
        lambda: PAvPU(
            ["entropy"], n_thresholds=64, ranges={"entropy": (0, math.log(C))}, threshold=0.5
        ),
        _seg_batch,
        lambda m, d: m.update(d["maps"], d["correct"], d["valid"]),
    ),
    "depth": (
        lambda: DepthMetrics(0.1, 10.0),
        _depth_batch,
        lambda m, d: m.update(d["pred"], d["target"], d["valid"]),
    ),
    "sparsification": (
        lambda: Sparsification(["var"], n_bins=200, min_depth=0.1, max_depth=10.0),
        _depth_batch,
        lambda m, d: m.update(d["pred"], d["target"], d["valid"], d["maps"]),
    ),
    "depth_nll": (
        lambda: DepthNLL("laplace"),
        _depth_batch,
        lambda m, d: m.update(d["pred"], d["var"], d["target"], d["valid"]),
    ),
}


def _split(d: dict, k: int) -> tuple[dict, dict]:
    def cut(x, sl):
        return {n: cut(v, sl) for n, v in x.items()} if isinstance(x, dict) else x[sl]

    return cut(d, slice(None, k)), cut(d, slice(k, None))


def _assert_same(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    elif isinstance(a, float):
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-9, abs=1e-12)
    else:
        assert a == b


@pytest.mark.parametrize("name", sorted(METRICS))
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 3))
def test_merge_of_two_halves_equals_whole(name, seed, k):
    make, batch, update = METRICS[name]
    d = batch(seed)
    first, second = _split(d, k)
    whole, a, b = make(), make(), make()
    update(whole, d)
    update(a, first)
    update(b, second)
    _assert_same(a.merge(b).compute(), whole.compute())


@pytest.mark.parametrize("name", sorted(METRICS))
def test_state_is_constant_size_and_round_trips(name):
    make, batch, update = METRICS[name]
    m = make()
    shapes = {k: (tuple(v.shape), v.dtype) for k, v in m.state.items()}
    assert all(v.dtype in (torch.int64, torch.float64) for v in m.state.values())
    for i in range(20):
        update(m, batch(i, b=2))
        assert {k: (tuple(v.shape), v.dtype) for k, v in m.state.items()} == shapes
    assert sum(int(v.abs().sum() > 0) for v in m.state.values()) > 0
    other = make()
    other.load_state_dict(m.state_dict())
    _assert_same(other.compute(), m.compute())
    m.reset()
    assert all(int(v.abs().sum()) == 0 for v in m.state.values())


def test_incompatible_merge_and_load_are_refused():
    with pytest.raises(ValueError, match="cannot merge"):
        ConfusionMatrix(3).merge(ConfusionMatrix(4))
    with pytest.raises(ValueError, match="cannot merge"):
        ConfusionMatrix(3).merge(DepthMetrics(0.1, 10))
    with pytest.raises(ValueError, match="shape"):
        ConfusionMatrix(3).load_state_dict(ConfusionMatrix(4).state_dict())


def test_all_reduce_sums_over_a_process_group(tmp_path):
    make, batch, update = METRICS["calibration"]
    m = make()
    update(m, batch(0))
    before = m.compute()
    m.all_reduce()  # no group: no-op
    _assert_same(m.compute(), before)
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        ref = [t.clone() for t in m.state_tensors()]
        m.all_reduce()  # world of one: the sum is the value itself, through the real collective
        for t, r in zip(m.state_tensors(), ref, strict=True):
            assert torch.equal(t, r)
    finally:
        dist.destroy_process_group()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", sorted(METRICS))
def test_cuda_matches_cpu(name):
    make, batch, update = METRICS[name]
    d = batch(1)
    cpu, gpu = make(), make()
    update(cpu, d)

    def to_cuda(x):
        return {k: to_cuda(v) for k, v in x.items()} if isinstance(x, dict) else x.cuda()

    update(gpu, to_cuda(d))
    assert gpu.device.type == "cuda"
    _assert_same(gpu.compute(), cpu.compute())


def test_quality_is_finite_when_both_outcomes_occur():
    make, batch, update = METRICS["quality"]
    m = make()
    update(m, batch(3))
    r = m.compute()["maps"]["entropy"]
    assert np.isfinite([r["auroc"], r["aupr"], r["aurc"]]).all()
