import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from seguncert.errors import DataError
from seguncert.metrics.novelty import NoveltyMetrics


def fpr95_direct(score: np.ndarray, y: np.ndarray) -> float:
    """FPR at the highest threshold (score >= t) whose TPR reaches 95 %, ties kept together."""
    order = np.argsort(-score, kind="stable")
    s, yy = score[order], y[order].astype(np.int64)
    tp, fp = np.cumsum(yy), np.cumsum(1 - yy)
    last = np.r_[s[1:] != s[:-1], True]  # end of each group of tied scores
    tp, fp = tp[last], fp[last]
    k = np.argmax(20 * tp >= 19 * yy.sum())
    return fp[k] / (len(yy) - yy.sum())


def _data(seed=0, shape=(4, 100, 500), p_ood=0.03, p_void=0.1):
    """Continuous scores (OOD shifted up), rare positives, and void pixels with wild scores."""
    g = np.random.default_rng(seed)
    ood = g.random(shape) < p_ood
    valid = (g.random(shape) >= p_void) & ~ood  # OOD pixels are void-labelled, as when pasted
    score = g.normal(size=shape) + 1.5 * ood
    score[~ood & ~valid] = g.choice([-1e9, 1e9], size=int((~ood & ~valid).sum()))
    return score, ood, valid


def _reference(score, ood, valid):
    keep = ood | valid
    s, y = score[keep], ood[keep]
    return roc_auc_score(y, s), average_precision_score(y, s), fpr95_direct(s, y)


def _metric(score, ood, valid, **kw):
    m = NoveltyMetrics(["u"], **kw)
    m.update({"u": torch.from_numpy(score)}, torch.from_numpy(ood), torch.from_numpy(valid))
    return m


def test_matches_sklearn_unbounded_scores():
    score, ood, valid = _data()
    r = _metric(score, ood, valid).compute()
    auroc, ap, fpr = _reference(score, ood, valid)
    got = r["maps"]["u"]
    assert got["auroc"] == pytest.approx(auroc, abs=1e-3)
    assert got["ap"] == pytest.approx(ap, abs=1e-3)
    assert got["fpr95"] == pytest.approx(fpr, abs=1e-3)
    assert r["n_ood"] == ood.sum() and r["n_id"] == valid.sum()
    assert r["n_ignored"] == (~ood & ~valid).sum()
    assert 0.1 < ap < 0.7 and 0.2 < fpr < 0.8  # a non-trivial operating point


def test_matches_sklearn_bounded_range():
    score, ood, valid = _data(seed=1)
    keep = ood | valid
    score = 1.0 / (1.0 + np.exp(-np.where(keep, score, 0.0)))  # like 1 - max p, in (0, 1)
    got = _metric(score, ood, valid, ranges={"u": (0.0, 1.0)}).compute()["maps"]["u"]
    auroc, ap, fpr = _reference(score, ood, valid)
    assert got["auroc"] == pytest.approx(auroc, abs=1e-3)
    assert got["ap"] == pytest.approx(ap, abs=1e-3)
    assert got["fpr95"] == pytest.approx(fpr, abs=1e-3)
    # the threshold reported is where its bin starts: within a bin of the exact 95 % TPR score
    s, y = score[keep], ood[keep]
    exact = np.sort(s[y])[::-1][int(np.ceil(0.95 * y.sum())) - 1]
    assert got["threshold95"] == pytest.approx(exact, abs=2.0 / 8192)


def test_tied_scores_are_exact():
    """Scores on a few levels, each in its own bin: histogram ties are sklearn's ties."""
    g = np.random.default_rng(2)
    shape = (2, 64, 64)
    ood = g.random(shape) < 0.2
    valid = ~ood
    score = (g.integers(0, 6, shape) + 2 * ood.astype(np.int64)).clip(0, 7) / 8.0 + 1 / 16
    got = _metric(score, ood, valid, ranges={"u": (0.0, 1.0)}, bins=8).compute()["maps"]["u"]
    auroc, ap, fpr = _reference(score, ood, valid)
    assert got["auroc"] == pytest.approx(auroc, abs=1e-12)
    assert got["ap"] == pytest.approx(ap, abs=1e-12)
    assert got["fpr95"] == pytest.approx(fpr, abs=1e-12)


def test_merge_of_halves_equals_one_pass():
    score, ood, valid = _data(seed=3, shape=(6, 40, 50))
    one = _metric(score, ood, valid)
    a = _metric(score[:2], ood[:2], valid[:2])
    b = _metric(score[2:], ood[2:], valid[2:])
    a.merge(b)
    for x, y in zip(a.state_tensors(), one.state_tensors()):
        assert torch.equal(x, y)
    assert a.compute() == one.compute()


def test_ignored_pixels_do_not_matter():
    score, ood, valid = _data(seed=4, shape=(2, 50, 60))
    base = _metric(score, ood, valid).compute()
    other = score.copy()
    neither = ~ood & ~valid
    other[neither] = np.nan  # not even checked: they are neither positive nor negative
    assert _metric(other, ood, valid).compute() == base
    other[neither] = 3.0  # inside the scores' range: would shift every metric if counted
    assert _metric(other, ood, valid).compute() == base


def test_several_maps_and_errors():
    score, ood, valid = _data(seed=5, shape=(2, 30, 40))
    m = NoveltyMetrics(["a", "b"], ranges={"b": (-10.0, 10.0)})
    t = torch.from_numpy
    m.update({"a": t(score), "b": t(-score), "extra": t(score)}, t(ood), t(valid))
    r = m.compute()["maps"]
    assert r["a"]["auroc"] > 0.8 and r["b"]["auroc"] < 0.2  # negated map ranks backwards
    assert r["a"]["auroc"] + r["b"]["auroc"] == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(ValueError, match="missing"):
        m.update({"a": t(score)}, t(ood), t(valid))
    bad = score.copy()
    bad[ood] = np.inf
    with pytest.raises(DataError):
        m.update({"a": t(bad), "b": t(score)}, t(ood), t(valid))
    with pytest.raises(ValueError, match="merge"):
        m.merge(NoveltyMetrics(["a", "b"]))


def test_empty_classes_give_nan():
    m = NoveltyMetrics(["u"])
    z = torch.zeros(1, 4, 4)
    m.update({"u": z}, z.bool(), torch.ones(1, 4, 4, dtype=torch.bool))
    r = m.compute()
    assert r["n_ood"] == 0 and np.isnan(r["maps"]["u"]["auroc"])
    assert r["maps"]["u"]["threshold95"] is None
