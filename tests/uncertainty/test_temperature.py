"""Temperature scaling: exact streaming Newton fit recovers known temperatures."""

from __future__ import annotations

import pytest
import torch

from seguncert.errors import DataError
from seguncert.uncertainty import temperature as temp_mod
from seguncert.uncertainty.temperature import (
    apply_temperature,
    fit_temperature,
    fit_temperature_streaming,
    nll,
)


def _calibrated(n: int, c: int, seed: int = 0):
    """Scores z and labels drawn from softmax(z): the calibrated temperature of z is 1."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=g) * 2.0
    y = torch.multinomial(torch.softmax(z, 1), 1, generator=g)[:, 0]
    return z, y


@pytest.mark.parametrize("t_true", [0.4, 1.0, 2.5])
def test_recovers_scalar_temperature(t_true):
    z, y = _calibrated(30_000, 6)
    t = fit_temperature(t_true * z, y)
    assert isinstance(t, float)
    assert t == pytest.approx(t_true, rel=0.05)


def test_recovers_per_class_temperature():
    z, y = _calibrated(60_000, 5, seed=1)
    t_true = torch.tensor([0.5, 1.0, 2.0, 3.0, 1.5])
    t = fit_temperature(z * t_true, y, per_class=True)
    assert t.shape == (5,)
    torch.testing.assert_close(t, t_true, rtol=0.08, atol=0)


def test_streaming_over_image_batches_is_exact(monkeypatch):
    # (B, C, H, W) batches with ignored pixels == the same valid pixels as one (N, C) tensor
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(6, 4, 5, 7, generator=g) * 3
    labels = torch.multinomial(
        torch.softmax(logits.permute(0, 2, 3, 1).reshape(-1, 4) / 1.7, 1), 1, generator=g
    ).view(6, 5, 7)
    labels[:, 0] = 255
    flat_z = logits.permute(0, 2, 3, 1).reshape(-1, 4)[labels.reshape(-1) != 255]
    flat_y = labels.reshape(-1)[labels.reshape(-1) != 255]
    passes = []
    real_pass = temp_mod._pass
    monkeypatch.setattr(temp_mod, "_pass", lambda *a: passes.append(1) or real_pass(*a))

    def batches():
        return ((logits[i : i + 2], labels[i : i + 2]) for i in range(0, 6, 2))

    streamed = fit_temperature_streaming(batches, num_classes=4)
    assert len(passes) <= 12  # Newton: a handful of passes over the data
    assert streamed == pytest.approx(fit_temperature(flat_z, flat_y), rel=1e-6)
    # the optimum: NLL is no lower a little to either side
    best = nll(logits, labels, streamed)
    assert best <= nll(logits, labels, streamed * 1.02)
    assert best <= nll(logits, labels, streamed / 1.02)
    assert best < nll(logits, labels, 1.0)
    per_class = fit_temperature([(logits, labels)], per_class=True)
    assert nll(logits, labels, per_class) <= best + 1e-9


def test_nll_and_apply_temperature():
    z = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 255])
    expect = float(-torch.log_softmax(z[:1] / 2, 1)[0, 0])
    assert nll(z, y, 2.0) == pytest.approx(expect)
    x = torch.ones(1, 2, 3, 3)
    out = apply_temperature(x, torch.tensor([2.0, 4.0]))
    assert torch.equal(out[:, 0], torch.full((1, 3, 3), 0.5))
    assert torch.equal(out[:, 1], torch.full((1, 3, 3), 0.25))


def test_bad_input():
    z = torch.randn(4, 3)
    with pytest.raises(DataError, match="no labelled pixels"):
        fit_temperature(z, torch.full((4,), 255))
    with pytest.raises(DataError, match="labels outside"):
        fit_temperature(z, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(DataError, match="do not match"):
        fit_temperature(z, torch.zeros(5, dtype=torch.long))
