"""CalibrationMetrics against torchmetrics (same binning: exact) and direct numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchmetrics.classification import MulticlassCalibrationError

from seguncert.errors import DataError
from seguncert.metrics import CalibrationMetrics


def _data(seed, b=2, c=5, h=12, w=10, ignore=0.15, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(scale * torch.randn(b, c, h, w, generator=g), dim=1)
    # targets correlated with the prediction so accuracy spans the bins
    sample = torch.multinomial(probs.permute(0, 2, 3, 1).reshape(-1, c), 1, generator=g)
    target = sample.view(b, h, w)
    target[torch.rand(b, h, w, generator=g) < ignore] = 255
    return probs, target


def _flat(probs, target):
    c = probs.shape[1]
    p = probs.permute(0, 2, 3, 1).reshape(-1, c).double().numpy()
    t = target.reshape(-1).numpy()
    keep = t != 255
    return p[keep], t[keep]


@pytest.mark.parametrize("seed,n_bins", [(0, 15), (1, 10), (2, 7)])
def test_ece_mce_match_torchmetrics_exactly(seed, n_bins):
    probs, target = _data(seed)
    m = CalibrationMetrics(5, n_bins=n_bins, chunk_pixels=37)  # tiny chunks: many partial ones
    m.update(probs, target)
    out = m.compute()
    for norm, key in (("l1", "ece"), ("max", "mce")):
        tm = MulticlassCalibrationError(5, n_bins=n_bins, norm=norm, ignore_index=255)
        tm.update(probs, target)
        assert out[key] == pytest.approx(float(tm.compute()), abs=1e-6)
    assert out["count"] == int((target != 255).sum())


def _bins_np(x, n):
    return np.minimum(np.floor(x * n).astype(int), n - 1)


def test_classwise_nll_brier_reliability_match_numpy():
    c, n = 5, 15
    probs, target = _data(3, b=3, h=16, w=9)
    m = CalibrationMetrics(c, n_bins=n)
    m.update(probs[:1], target[:1])
    m.update(probs[1:], target[1:])
    out = m.compute()
    p, t = _flat(probs, target)
    big_n = len(t)
    onehot = np.eye(c)[t]
    for k in range(c):
        bins = _bins_np(p[:, k], n)
        ece = 0.0
        for b in range(n):
            sel = bins == b
            if sel.any():
                ece += sel.sum() / big_n * abs(onehot[sel, k].mean() - p[sel, k].mean())
                assert out["classwise_reliability"]["counts"][k][b] == sel.sum()
                assert out["classwise_reliability"]["frequency"][k][b] == pytest.approx(
                    onehot[sel, k].mean()
                )
        assert out["classwise_ece"][k] == pytest.approx(ece, abs=1e-9)
    assert out["mean_classwise_ece"] == pytest.approx(np.mean(out["classwise_ece"]))
    nll = -np.log(np.maximum(p[np.arange(big_n), t], 1e-12)).mean()
    assert out["nll"] == pytest.approx(nll, rel=1e-9)
    assert out["brier"] == pytest.approx(((p - onehot) ** 2).sum(1).mean(), rel=1e-9)
    conf, correct = p.max(1), p.argmax(1) == t
    bins = _bins_np(conf, n)
    rel = out["reliability"]
    assert len(rel["edges"]) == n + 1 and sum(rel["counts"]) == big_n
    for b in range(n):
        sel = bins == b
        assert rel["counts"][b] == sel.sum()
        if sel.any():
            assert rel["accuracy"][b] == pytest.approx(correct[sel].mean())
            assert rel["confidence"][b] == pytest.approx(conf[sel].mean())
        else:
            assert np.isnan(rel["accuracy"][b])


def test_confidence_one_goes_to_last_bin():
    target = torch.tensor([[[0, 1]]])
    probs = torch.nn.functional.one_hot(torch.tensor([[[0, 0]]]), 3).permute(0, 3, 1, 2).float()
    m = CalibrationMetrics(3, n_bins=10)
    m.update(probs, target)
    out = m.compute()
    assert out["reliability"]["counts"][-1] == 2
    assert out["ece"] == pytest.approx(0.5) and out["mce"] == pytest.approx(0.5)
    assert out["nll"] == pytest.approx(-0.5 * np.log(1e-12))  # clamped, not inf


@settings(max_examples=25, deadline=None)
@given(c=st.integers(2, 6), n_bins=st.sampled_from([5, 10, 15]), data=st.data())
def test_perfectly_calibrated_construction_has_zero_ece(c, n_bins, data):
    # bin centres (b + 0.5) / n; k = 2n pixels per bin of which exactly centre * k = 2b + 1 right
    usable = [b for b in range(n_bins) if (b + 0.5) / n_bins > 1.0 / c + 1e-3]
    chosen = data.draw(st.lists(st.sampled_from(usable), min_size=1, max_size=4, unique=True))
    probs, target = [], []
    for b in chosen:
        conf = (b + 0.5) / n_bins
        k = 2 * n_bins
        row = torch.full((k, c), (1 - conf) / (c - 1), dtype=torch.float64)
        row[:, 0] = conf
        t = torch.ones(k, dtype=torch.long)
        t[: 2 * b + 1] = 0
        probs.append(row)
        target.append(t)
    p = torch.cat(probs).T.reshape(1, c, 1, -1)
    t = torch.cat(target).reshape(1, 1, -1)
    m = CalibrationMetrics(c, n_bins=n_bins)
    m.update(p, t)
    out = m.compute()
    assert out["ece"] <= 1e-6 and out["mce"] <= 1e-6
    assert all(e >= 0 for e in out["classwise_ece"])


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), c=st.integers(2, 5))
def test_classwise_ece_non_negative_and_bounded(seed, c):
    probs, target = _data(seed, b=1, c=c, h=5, w=6)
    m = CalibrationMetrics(c)
    m.update(probs, target)
    out = m.compute()
    assert all(0 <= e <= 1 for e in out["classwise_ece"])
    assert 0 <= out["ece"] <= out["mce"] + 1e-12 and 0 <= out["brier"] <= 2


def test_rejects_logits_and_bad_shapes():
    m = CalibrationMetrics(3)
    t = torch.zeros(1, 2, 2, dtype=torch.long)
    with pytest.raises(DataError, match="softmax"):
        m.update(torch.randn(1, 3, 2, 2) * 5, t)
    with pytest.raises(ValueError, match="expected probs"):
        m.update(torch.rand(1, 4, 2, 2), t)
    with pytest.raises(DataError, match="finite"):
        m.update(torch.full((1, 3, 2, 2), float("nan")), t)
