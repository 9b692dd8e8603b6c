"""Depth metrics, sparsification / AUSE and interval calibration against direct numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from seguncert.metrics import DepthMetrics, DepthNLL, Sparsification


def _depth(seed, shape=(2, 30, 40), outliers=True):
    rng = np.random.default_rng(seed)
    target = rng.uniform(0.5, 9.0, shape)
    sigma = rng.uniform(0.05, 1.0, shape)
    pred = np.abs(target + sigma * rng.normal(size=shape)) + 0.01
    valid = rng.random(shape) > 0.1
    target[0, 0, :5] = 20.0  # beyond max_depth: excluded
    if outliers:  # clamped to max_depth (left out of the sparsification check: one huge
        pred[0, 1, :3] = 50.0  # error in a curve's boundary bin moves it beyond bin resolution)

    return (torch.tensor(x) for x in (pred, target, valid, sigma**2))


def _keep(pred, target, valid, lo=0.1, hi=10.0):
    p, t, v = pred.numpy(), target.numpy(), valid.numpy()
    m = v & (t >= lo) & (t <= hi)
    return np.clip(p[m], lo, hi), t[m], m


def test_depth_metrics_match_numpy():
    pred, target, valid, _ = _depth(0)
    m = DepthMetrics(0.1, 10.0)
    m.update(pred[:1], target[:1], valid[:1])
    m.update(pred[1:], target[1:], valid[1:])
    out = m.compute()
    p, t, _ = _keep(pred, target, valid)
    ratio = np.maximum(p / t, t / p)
    ref = {
        "abs_rel": np.mean(np.abs(p - t) / t),
        "sq_rel": np.mean((p - t) ** 2 / t),
        "rmse": np.sqrt(np.mean((p - t) ** 2)),
        "rmse_log": np.sqrt(np.mean((np.log(p) - np.log(t)) ** 2)),
        "log10": np.mean(np.abs(np.log10(p) - np.log10(t))),
        "mae": np.mean(np.abs(p - t)),
        "delta1": np.mean(ratio < 1.25),
        "delta2": np.mean(ratio < 1.25**2),
        "delta3": np.mean(ratio < 1.25**3),
    }
    for k, v in ref.items():
        assert out[k] == pytest.approx(v, rel=1e-12), k
    assert out["count"] == len(t)


def _sparsification_np(err_fn, unc, p, t, fractions):
    """Direct: sort by uncertainty (descending), drop the first round(f N), error of the rest."""
    n = len(t)
    out = []
    order = np.argsort(-unc, kind="stable")
    for f in fractions:
        rest = order[int(round(f * n)) :]
        out.append(err_fn(p[rest], t[rest]))
    return np.array(out)


def _rmse(p, t):
    return np.sqrt(np.mean((p - t) ** 2))


def _absrel(p, t):
    return np.mean(np.abs(p - t) / t)


def test_sparsification_and_ause_match_sort_based_numpy():
    pred, target, valid, var = _depth(1, shape=(2, 60, 80), outliers=False)
    s = Sparsification(["var", "random"], n_bins=1000, min_depth=0.1, max_depth=10.0)
    rng = np.random.default_rng(9)
    rand = torch.tensor(rng.random(var.shape))
    s.update(pred[:1], target[:1], valid[:1], {"var": var[:1], "random": rand[:1]})
    s.update(pred[1:], target[1:], valid[1:], {"var": var[1:], "random": rand[1:]})
    out = s.compute()
    p, t, m = _keep(pred, target, valid)
    f = np.asarray(out["fractions"])
    assert len(f) == 100 and f[0] == 0 and f[-1] == pytest.approx(0.99)
    for metric, fn, err in (("rmse", _rmse, (p - t) ** 2), ("abs_rel", _absrel, np.abs(p - t) / t)):
        oracle = _sparsification_np(fn, err, p, t, f)
        np.testing.assert_allclose(out["oracle"][metric], oracle, rtol=2e-2)
        for name, unc in (("var", var.numpy()[m]), ("random", rand.numpy()[m])):
            curve = _sparsification_np(fn, unc, p, t, f)
            np.testing.assert_allclose(out["curves"][metric][name], curve, rtol=2e-2, atol=2e-3)
            ause = np.trapezoid(curve - oracle, f)
            assert out["ause"][metric][name] == pytest.approx(ause, rel=2e-2, abs=1e-3)
        # informative uncertainty beats a random one; both sit above the oracle
        assert 0 < out["ause"][metric]["var"] < out["ause"][metric]["random"]
    full = DepthMetrics(0.1, 10.0)
    full.update(pred, target, valid)
    assert out["curves"]["rmse"]["var"][0] == pytest.approx(full.compute()["rmse"], rel=1e-12)


@pytest.mark.parametrize("dist", ["gaussian", "laplace"])
def test_nll_and_interval_coverage(dist):
    rng = np.random.default_rng(2)
    shape = (2, 100, 100)
    mean = rng.uniform(4.0, 8.0, shape)  # targets stay > 0 (valid depth)
    var = rng.uniform(0.01, 0.5, shape)
    if dist == "gaussian":
        target = mean + np.sqrt(var) * rng.normal(size=shape)
        ref_nll = -stats.norm.logpdf(target, mean, np.sqrt(var))
        half = {p: stats.norm.ppf(0.5 + p / 2) * np.sqrt(var) for p in (0.5, 0.9, 0.95)}
    else:
        b = np.sqrt(var / 2)
        target = mean + rng.laplace(0.0, b, shape)
        ref_nll = -stats.laplace.logpdf(target, mean, b)
        half = {p: stats.laplace.ppf(0.5 + p / 2) * b for p in (0.5, 0.9, 0.95)}
    valid = np.ones(shape, bool)
    valid[0, :10] = False
    metric = DepthNLL(dist)
    args = [torch.tensor(x) for x in (mean, var, target, valid)]
    metric.update(*args)
    out = metric.compute()
    assert out["nll"] == pytest.approx(ref_nll[valid].mean(), rel=1e-9)
    r = np.abs(target - mean)
    for level, cov in zip(out["levels"], out["coverage"], strict=True):
        assert cov == pytest.approx((r <= half[level])[valid].mean(), abs=1e-12)
        assert abs(cov - level) < 0.015  # samples from the model's own distribution: calibrated
    assert out["coverage_error"] < 0.015 and out["count"] == valid.sum()


def test_depth_nll_flags_overconfidence():
    rng = np.random.default_rng(3)
    mean = np.full((1, 50, 50), 5.0)
    target = mean + rng.normal(size=mean.shape)
    m = DepthNLL("gaussian")
    m.update(*(torch.tensor(x) for x in (mean, np.full_like(mean, 0.01), target)), None)
    out = m.compute()
    assert out["coverage"][2] < 0.2 and out["nll"] > 10 * math.log(2)
