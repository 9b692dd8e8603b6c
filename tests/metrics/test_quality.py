"""UncertaintyQuality and PAvPU against sklearn and direct sort/loop implementations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, roc_auc_score

from seguncert.errors import DataError
from seguncert.metrics import PAvPU, UncertaintyQuality


def _data(seed, shape=(2, 20, 25), centres=None):
    """Uncertainty in [0, 1] that is informative but noisy; errors more likely when uncertain."""
    rng = np.random.default_rng(seed)
    u = rng.random(shape)
    if centres is not None:  # snap onto bin centres: histogram ties == true ties
        u = (np.floor(u * centres) + 0.5) / centres
    correct = rng.random(shape) > 0.15 + 0.6 * u
    valid = rng.random(shape) > 0.1
    return torch.tensor(u), torch.tensor(correct), torch.tensor(valid)


def _aurc_np(u, err):
    order = np.argsort(u, kind="stable")
    e = err[order].astype(float)
    return float((np.cumsum(e) / np.arange(1, len(e) + 1)).mean())


def test_auroc_aupr_aurc_continuous_within_bin_resolution():
    u, correct, valid = _data(0)
    q = UncertaintyQuality(["u"], n_bins=2048, ranges={"u": (0.0, 1.0)})
    q.update({"u": u[:1]}, correct[:1], valid[:1])
    q.update({"u": u[1:], "ignored": u[1:]}, correct[1:], valid[1:])
    out = q.compute()
    s, err = u[valid].numpy(), ~correct[valid].numpy()
    r = out["maps"]["u"]
    assert out["count"] == len(s) and out["error_rate"] == pytest.approx(err.mean())
    assert r["auroc"] == pytest.approx(roc_auc_score(err, s), abs=1e-3)
    assert r["aupr"] == pytest.approx(average_precision_score(err, s), abs=1e-3)
    assert r["aurc"] == pytest.approx(_aurc_np(s, err), abs=1e-3)
    # precision vs percentile (Kendall & Gal Fig. 3): accuracy after dropping the top x%
    order = np.argsort(-s)
    for pct, acc in zip(
        r["precision_curve"]["percentile"], r["precision_curve"]["accuracy"], strict=True
    ):
        drop = int(round(len(s) * pct / 100))
        assert acc == pytest.approx((~err[order][drop:]).mean(), abs=2e-3)
    assert r["precision_curve"]["accuracy"][0] == pytest.approx(1 - err.mean())


def test_exact_when_scores_are_on_bin_centres():
    n = 64
    u, correct, valid = _data(1, centres=n)
    q = UncertaintyQuality(["u"], n_bins=n, ranges={"u": (0.0, 1.0)})
    q.update({"u": u}, correct, valid)
    r = q.compute()["maps"]["u"]
    s, err = u[valid].numpy(), ~correct[valid].numpy()
    assert r["auroc"] == pytest.approx(roc_auc_score(err, s), abs=1e-12)
    assert r["aupr"] == pytest.approx(average_precision_score(err, s), abs=1e-12)


def test_aurc_exact_when_bins_are_homogeneous():
    # each bin holds only right or only wrong pixels: within-bin order cannot matter
    rng = np.random.default_rng(2)
    n = 32
    bin_err = rng.random(n) < 0.4
    idx = rng.integers(0, n, 500)
    s = (idx + 0.5) / n
    err = bin_err[idx]
    q = UncertaintyQuality(["u"], n_bins=n, ranges={"u": (0.0, 1.0)})
    q.update({"u": torch.tensor(s).view(1, 20, 25)}, torch.tensor(~err).view(1, 20, 25))
    r = q.compute()["maps"]["u"]
    assert r["aurc"] == pytest.approx(_aurc_np(s, err), abs=1e-12)
    best = _aurc_np(err.astype(float), err)  # oracle: all correct pixels first
    assert r["eaurc"] == pytest.approx(r["aurc"] - best, abs=1e-12)


def test_unbounded_map_is_squashed_without_changing_ranks():
    rng = np.random.default_rng(3)
    u = rng.exponential(2.0, (1, 30, 30))
    correct = rng.random(u.shape) > 0.1 + 0.08 * u
    q = UncertaintyQuality(["var"], n_bins=2048)  # no range: u / (1 + u)
    q.update({"var": torch.tensor(u)}, torch.tensor(correct))
    r = q.compute()["maps"]["var"]
    assert r["auroc"] == pytest.approx(roc_auc_score(~correct.ravel(), u.ravel()), abs=2e-3)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), frac=st.floats(0.05, 0.95))
def test_auroc_one_when_uncertainty_separates_errors(seed, frac):
    rng = np.random.default_rng(seed)
    err = rng.random((1, 6, 7)) < frac
    if err.all() or not err.any():
        err.flat[0] = not err.flat[0]
    u = np.where(err, rng.uniform(0.6, 1.0, err.shape), rng.uniform(0.0, 0.4, err.shape))
    q = UncertaintyQuality(["u"], n_bins=256, ranges={"u": (0, 1)})
    q.update({"u": torch.tensor(u)}, torch.tensor(~err))
    r = q.compute()["maps"]["u"]
    assert r["auroc"] == 1.0 and r["aupr"] == pytest.approx(1.0)
    assert r["eaurc"] == pytest.approx(0.0, abs=1e-12)


def _pavpu_np(u, correct, valid, k, thresholds):
    means, accurate = [], []
    b, h, w = u.shape
    for i in range(b):
        for y in range(0, h, k):
            for x in range(0, w, k):
                v = valid[i, y : y + k, x : x + k]
                if not v.any():
                    continue
                means.append(u[i, y : y + k, x : x + k][v].mean())
                accurate.append(correct[i, y : y + k, x : x + k][v].mean() > 0.5)
    means, accurate = np.array(means), np.array(accurate)
    rows = []
    for t in thresholds:
        cert = means < t
        rows.append(
            [
                (accurate & cert).sum(),
                (accurate & ~cert).sum(),
                (~accurate & cert).sum(),
                (~accurate & ~cert).sum(),
            ]
        )
    return np.array(rows, dtype=float), len(means)


def test_pavpu_matches_patch_loop():
    u, correct, valid = _data(4, shape=(2, 18, 23))  # not multiples of 4: partial patches
    valid[0, :8, :8] = False  # whole patches without a valid pixel are skipped
    n_thr = 50
    m = PAvPU(["u"], n_thresholds=n_thr, ranges={"u": (0.0, 1.0)}, threshold=0.3)
    m.update({"u": u[:1]}, correct[:1], valid[:1])
    m.update({"u": u[1:]}, correct[1:], valid[1:])
    out = m.compute()["u"]
    sw = out["sweep"]
    thr = np.asarray(sw["threshold"])
    np.testing.assert_allclose(thr, np.linspace(0, 1, n_thr + 1))
    ref, n_patches = _pavpu_np(u.numpy(), correct.numpy(), valid.numpy(), 4, thr)
    assert out["patches"] == n_patches
    got = np.stack([sw["n_ac"], sw["n_au"], sw["n_ic"], sw["n_iu"]], axis=1)
    np.testing.assert_array_equal(got, ref)
    pav = (ref[:, 0] + ref[:, 3]) / n_patches
    np.testing.assert_allclose(sw["pavpu"], pav)
    assert out["best"]["pavpu"] == pytest.approx(pav.max())
    k = 15  # 0.3 is edge 15 of 50
    at = out["at_threshold"]
    assert at["threshold"] == pytest.approx(0.3)
    assert at["p_accurate_given_certain"] == pytest.approx(ref[k, 0] / (ref[k, 0] + ref[k, 2]))
    assert at["p_uncertain_given_inaccurate"] == pytest.approx(ref[k, 3] / (ref[k, 2] + ref[k, 3]))
    again = m.compute(threshold={"u": 0.5})["u"]["at_threshold"]
    assert again["threshold"] == pytest.approx(0.5) and again["n_ac"] == ref[25, 0]


def test_pavpu_squashed_thresholds_are_finite_in_map_units():
    u, correct, valid = _data(5)
    m = PAvPU(["v"], n_thresholds=20)
    m.update({"v": u * 5}, correct, valid)
    out = m.compute(threshold=1.0)["v"]
    thr = out["sweep"]["threshold"]
    assert len(thr) == 20 and np.isfinite(thr).all() and thr[10] == pytest.approx(1.0)
    assert out["at_threshold"]["threshold"] == pytest.approx(1.0)


def test_bad_inputs():
    q = UncertaintyQuality(["u"], ranges={"u": (0, 1)})
    c = torch.ones(1, 2, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="missing"):
        q.update({"x": torch.zeros(1, 2, 2)}, c)
    with pytest.raises(DataError, match="NaN"):
        q.update({"u": torch.full((1, 2, 2), float("nan"))}, c)
    with pytest.raises(ValueError, match="range"):
        UncertaintyQuality(["u"], ranges={"u": (1.0, 0.0)})
