"""Uncertainty maths: decomposition properties and streaming == direct formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seguncert.errors import ConfigError
from seguncert.uncertainty.maps import (
    RegressionAccumulator,
    SegmentationAccumulator,
    expected_entropy,
    mutual_information,
    predicted_class_variance,
    predictive_entropy,
    predictive_variance,
    regression_uncertainty,
)


def _probs(seed: int, t: int, c: int, scale: float, b: int = 2, h: int = 3, w: int = 4):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(t, b, c, h, w, generator=g) * scale
    return torch.softmax(logits, 2)


PROFILE = settings(max_examples=40, deadline=None)

probs_args = dict(
    seed=st.integers(0, 10_000),
    t=st.integers(1, 6),
    c=st.integers(2, 7),
    scale=st.sampled_from([0.0, 0.5, 3.0, 40.0]),  # 40: saturated softmax with exact zeros
)


@PROFILE
@given(**probs_args)
def test_decomposition_properties(seed, t, c, scale):
    probs = _probs(seed, t, c, scale)
    total = predictive_entropy(probs.mean(0))
    aleatoric = expected_entropy(probs)
    epistemic = mutual_information(probs)
    assert torch.isfinite(total).all() and torch.isfinite(aleatoric).all()
    assert (total <= math.log(c) + 1e-5).all()
    assert (aleatoric >= 0).all() and (epistemic >= -1e-6).all()
    # total = aleatoric + epistemic, exactly up to the clamp of rounding-level negative MI
    torch.testing.assert_close(total, aleatoric + epistemic, atol=1e-5, rtol=0)


@PROFILE
@given(seed=st.integers(0, 10_000), t=st.integers(1, 6), c=st.integers(2, 7))
def test_mi_zero_when_samples_agree(seed, t, c):
    one = _probs(seed, 1, c, 2.0)
    probs = one.expand(t, *one.shape[1:])
    assert mutual_information(probs).abs().max() <= 1e-6
    assert predicted_class_variance(probs).abs().max() <= 1e-7


def test_entropy_extremes():
    c = 5
    uniform = torch.full((1, c, 2, 2), 1.0 / c)
    torch.testing.assert_close(predictive_entropy(uniform), torch.full((1, 2, 2), math.log(c)))
    onehot = torch.zeros(1, c, 2, 2)
    onehot[:, 1] = 1.0
    assert predictive_entropy(onehot).abs().max() == 0  # p log p at p = 0 is 0, not NaN


def test_predicted_class_variance_matches_numpy():
    probs = _probs(3, 7, 4, 2.0)
    pred = probs.mean(0).argmax(1)
    p = probs.numpy()
    expect = np.empty(pred.shape, np.float32)
    for b, i, j in np.ndindex(*pred.shape):
        expect[b, i, j] = np.var(p[:, b, int(pred[b, i, j]), i, j])
    torch.testing.assert_close(predicted_class_variance(probs), torch.from_numpy(expect))


@PROFILE
@given(**probs_args, chunk=st.integers(1, 4), hetero=st.booleans())
def test_accumulator_equals_direct(seed, t, c, scale, chunk, hetero):
    probs = _probs(seed, t, c, scale)
    log_var = torch.randn(t, 2, 1, 3, 4, generator=torch.Generator().manual_seed(seed))
    acc = SegmentationAccumulator()
    for i in range(0, t, chunk):
        part = probs[i : i + chunk]
        # alternate tensor and list input
        acc.update(part if i % 2 else list(part), log_var[i : i + chunk] if hetero else None)
    out = acc.finalize()
    p_mean = probs.mean(0)
    torch.testing.assert_close(out["probs"], p_mean)
    assert torch.equal(out["pred"], p_mean.argmax(1))
    torch.testing.assert_close(out["entropy"], predictive_entropy(p_mean), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["aleatoric"], expected_entropy(probs), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["epistemic"], mutual_information(probs), atol=2e-5, rtol=0)
    torch.testing.assert_close(
        out["prob_var"], predicted_class_variance(probs, out["pred"]), atol=2e-6, rtol=0
    )
    assert ("logit_var" in out) == hetero
    if hetero:
        torch.testing.assert_close(out["logit_var"], log_var.exp().mean(0)[:, 0])


@PROFILE
@given(**probs_args, chunk=st.integers(1, 4))
def test_noise_aleatoric_is_mean_entropy_gain(seed, t, c, scale, chunk):
    probs = _probs(seed, t, c, scale)  # stands for the noise-integrated p_t
    g = torch.Generator().manual_seed(seed + 1)
    clean = torch.log_softmax(torch.randn(t, 2, c, 3, 4, generator=g) * scale, 2)
    acc, plain = SegmentationAccumulator(), SegmentationAccumulator()
    for i in range(0, t, chunk):
        acc.update(probs[i : i + chunk], noise_free_log_probs=clean[i : i + chunk])
        plain.update(probs[i : i + chunk])
    out = acc.finalize()
    p, q = probs.double().numpy(), clean.double().exp().numpy()
    gain = (-(p * np.log(np.where(p > 0, p, 1))).sum(2) + (q * np.log(q)).sum(2)).mean(0)
    np.testing.assert_allclose(out["noise_aleatoric"].numpy(), gain.clip(0), atol=2e-5)
    assert out.keys() == plain.finalize().keys() | {"noise_aleatoric"}
    for k, v in plain.finalize().items():  # the other maps do not change
        torch.testing.assert_close(out[k], v, atol=0, rtol=0)


def test_per_class_logit_var_picks_predicted_class():
    probs = _probs(1, 3, 4, 2.0)
    log_var = torch.randn(3, 2, 4, 3, 4)
    acc = SegmentationAccumulator()
    acc.update(probs, log_var)
    out = acc.finalize()
    expect = log_var.exp().mean(0).gather(1, out["pred"][:, None])[:, 0]
    torch.testing.assert_close(out["logit_var"], expect)


def test_weighted_merge_and_scale():
    a, b = _probs(1, 3, 4, 1.0), _probs(2, 2, 4, 1.0)
    acc_a, acc_b = SegmentationAccumulator(), SegmentationAccumulator()
    acc_a.update(a)
    acc_b.update(b)
    # scaling everything (sums and count) by a per-pixel weight leaves the maps unchanged
    clean = torch.log_softmax(torch.randn(3, 2, 4, 3, 4), 2)
    noisy, scaled = SegmentationAccumulator(), SegmentationAccumulator()
    noisy.update(a, noise_free_log_probs=clean)
    scaled.update(a, noise_free_log_probs=clean)
    scaled.scale_(torch.rand(2, 1, 3, 4) + 0.1)
    assert "noise_aleatoric" in scaled.finalize()
    for k, v in noisy.finalize().items():
        torch.testing.assert_close(scaled.finalize()[k], v, atol=1e-5, rtol=1e-5)
    # merging = accumulating the concatenation
    acc_a.merge_(acc_b)
    joint = SegmentationAccumulator()
    joint.update(torch.cat([a, b]))
    for k, v in joint.finalize().items():
        torch.testing.assert_close(acc_a.finalize()[k], v, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("with_var", [True, False])
def test_regression_maps_match_numpy(with_var):
    g = torch.Generator().manual_seed(0)
    locs = 30.0 + torch.randn(9, 2, 1, 3, 4, generator=g) * 0.05  # far and nearly equal
    var = torch.rand(9, 2, 1, 3, 4, generator=g) if with_var else None
    direct = regression_uncertainty(locs, var)
    x = locs.double().numpy()
    np.testing.assert_allclose(direct["depth"].numpy(), x.mean(0)[:, 0], rtol=1e-6)
    np.testing.assert_allclose(direct["epistemic_var"].numpy(), x.var(0)[:, 0], rtol=1e-3)
    ale = var.double().numpy().mean(0)[:, 0] if with_var else np.zeros((2, 3, 4))
    np.testing.assert_allclose(direct["aleatoric_var"].numpy(), ale, rtol=1e-6)
    np.testing.assert_allclose(direct["total_var"].numpy(), ale + x.var(0)[:, 0], rtol=1e-3)
    acc = RegressionAccumulator()
    for i in range(0, 9, 4):
        acc.update(locs[i : i + 4], var[i : i + 4] if with_var else None)
    out = acc.finalize()
    # float64 sums: the small epistemic variance at 30 m survives E[x²] - E[x]²
    np.testing.assert_allclose(out["epistemic_var"].numpy(), x.var(0)[:, 0], rtol=1e-4)
    for k in ("depth", "aleatoric_var", "total_var"):
        np.testing.assert_allclose(out[k].numpy(), direct[k].numpy(), rtol=1e-4, atol=1e-7)


def test_predictive_variance():
    s = torch.tensor([-1.0, 0.0, 0.7])
    torch.testing.assert_close(predictive_variance(s, "gaussian"), torch.exp(s) ** 2)
    torch.testing.assert_close(predictive_variance(s, "laplace"), 2 * torch.exp(s) ** 2)
    with pytest.raises(ConfigError, match="depth distribution"):
        predictive_variance(s, "cauchy")


def test_finalize_before_update_is_an_error():
    with pytest.raises(ValueError, match="before any update"):
        SegmentationAccumulator().finalize()
