"""ConfusionMatrix against sklearn on small random label maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, jaccard_score, recall_score

from seguncert.errors import DataError
from seguncert.metrics import ConfusionMatrix


def _labels(seed, c=5, shape=(3, 9, 11), absent=4):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, c, shape, generator=g)
    pred = torch.where(
        torch.rand(shape, generator=g) < 0.6, target, torch.randint(0, c, shape, generator=g)
    )
    target[torch.rand(shape, generator=g) < 0.2] = 255
    # one class absent from both maps: its IoU must be NaN and left out of the mean
    target[target == absent] = 0
    pred[pred == absent] = 1
    return pred, target


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_sklearn(seed):
    c = 5
    pred, target = _labels(seed, c)
    m = ConfusionMatrix(c)
    m.update(pred[:2], target[:2])
    m.update(pred[2:], target[2:])
    out = m.compute()
    keep = (target != 255).numpy().ravel()
    y, p = target.numpy().ravel()[keep], pred.numpy().ravel()[keep]
    labels = list(range(c))
    np.testing.assert_array_equal(np.array(out["confusion"]), confusion_matrix(y, p, labels=labels))
    present = [0, 1, 2, 3]
    iou = jaccard_score(y, p, labels=present, average=None)
    np.testing.assert_allclose(np.array(out["per_class_iou"])[present], iou, rtol=1e-12)
    assert np.isnan(out["per_class_iou"][4])
    assert out["miou"] == pytest.approx(iou.mean(), rel=1e-12)
    assert out["pixel_accuracy"] == pytest.approx(accuracy_score(y, p), rel=1e-12)
    rec = recall_score(y, p, labels=present, average=None)
    np.testing.assert_allclose(np.array(out["per_class_accuracy"])[present], rec, rtol=1e-12)
    assert out["class_accuracy"] == pytest.approx(rec.mean(), rel=1e-12)
    assert out["count"] == keep.sum() and sum(out["support"]) == keep.sum()


def test_bad_labels_and_types():
    m = ConfusionMatrix(3)
    t = torch.zeros(1, 2, 2, dtype=torch.long)
    with pytest.raises(DataError, match="label value 7"):
        m.update(t, t + 7)
    with pytest.raises(ValueError, match="integer class ids"):
        m.update(t.float(), t)
    with pytest.raises(ValueError, match="shape mismatch"):
        m.update(t[:, :1], t)
    with pytest.raises(ValueError, match="outside"):
        m.update(t + 3, t)


def test_empty_is_nan():
    out = ConfusionMatrix(3).compute()
    assert np.isnan(out["miou"]) and np.isnan(out["pixel_accuracy"]) and out["count"] == 0
