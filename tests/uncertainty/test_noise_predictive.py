"""Noise-integrated MC predictive: p_t = mean_s softmax(cal(f_t + σ_t ε_s)) against a direct
computation from the same seeded draws, and its invariances (chunks, naive loop, video)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from seguncert.errors import ConfigError
from seguncert.models.base import mc_dropout_mode
from seguncert.uncertainty.masks import SeededDropout, noise_seed
from seguncert.uncertainty.sampler import MCSampler, naive_mc
from seguncert.uncertainty.temporal import TemporalMC


class _Rescale(nn.Module):
    """Extra last stage: logits * gain and logit_log_var * scale + shift (shift a number or (C,),
    the latter making the variance per class), to set the toy's confidence and σ. The toy's own
    logits are nearly uniform, where a finite-S noise mixture can only lower the entropy."""

    def __init__(self, gain: float, scale: float, shift: float | torch.Tensor) -> None:
        super().__init__()
        self.gain, self.scale = gain, scale
        self.shift = shift if isinstance(shift, torch.Tensor) else torch.tensor([float(shift)])

    def forward(self, state: dict) -> dict:
        lv = state["logit_log_var"] * self.scale + self.shift.view(1, -1, 1, 1)
        return {**state, "logits": state["logits"] * self.gain, "logit_log_var": lv}


def _hetero(make_model, classes: int = 4, gain=8.0, scale: float = 1.0, shift=0.0, **kw):
    model = make_model(classes=classes, hetero=True, **kw)
    model.stages.append(_Rescale(gain, scale, shift))
    return model


def _entropy(p: torch.Tensor, dim: int) -> torch.Tensor:
    return -torch.xlogy(p, p).sum(dim)


def _direct(model, x, samples: int, noise: int, seed: int = 0, tau: float = 1.0) -> dict:
    """All T*S softmaxes stacked: full passes with the sampler's masks, ε_s shared by the T
    samples, drawn from generators seeded by noise_seed(seed, 0, s) (the call's first sample is
    0), temperature τ on every noisy logit."""
    outs = []
    with torch.no_grad(), mc_dropout_mode(model), SeededDropout(model, seed) as masks:
        for t in range(samples):
            masks.set_samples(range(t, t + 1))
            outs.append(model(x))
    f = torch.stack([o["logits"] for o in outs])  # (T, B, C, H, W)
    lv = torch.stack([o["logit_log_var"] for o in outs])

    def draw(t: int, s: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(noise_seed(seed, 0, s))
        return torch.randn(f.shape[1:], generator=gen)

    eps = torch.stack([torch.stack([draw(t, s) for s in range(noise)]) for t in range(samples)])
    probs = torch.softmax((f[:, None] + torch.exp(lv / 2)[:, None] * eps) / tau, 3)
    p_t = probs.mean(1)
    p_bar = probs.mean((0, 1))
    pred = p_bar.argmax(1)
    total = _entropy(p_bar, 1)
    aleatoric = _entropy(p_t, 2).mean(0)
    clean = _entropy(torch.softmax(f / tau, 2), 2)
    idx = pred[None, :, None].expand(samples, -1, 1, -1, -1)
    var = lv.exp().mean(0)
    logit_var = var[:, 0] if lv.shape[2] == 1 else var.gather(1, pred[:, None])[:, 0]
    return {
        "probs": p_bar,
        "pred": pred,
        "entropy": total,
        "aleatoric": aleatoric,
        "epistemic": (total - aleatoric).clamp_min(0),
        "prob_var": p_t.gather(2, idx)[:, :, 0].var(0, unbiased=False),
        "noise_aleatoric": (_entropy(p_t, 2) - clean).mean(0).clamp_min(0),
        "logit_var": logit_var,
        "samples": p_t,
        "logits": f,
        "logit_log_var": lv,
    }


def _close(a: dict, b: dict, atol=1e-5, keys=None):
    keys = a.keys() if keys is None else keys
    for k in keys:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-5, msg=k)


@pytest.mark.parametrize("per_class", [False, True])
def test_maps_equal_direct_stack_of_softmaxes(make_model, image, per_class):
    shift = torch.tensor([-1.0, 0.0, 0.5, 1.0]) if per_class else 0.5
    model = _hetero(make_model, shift=shift)
    sampler = MCSampler(model, samples=5, seed=2, noise_samples=6, return_samples=True,
                        return_logits=True)  # fmt: skip
    out = sampler(image)
    ref = _direct(model, image, 5, 6, seed=2)
    assert out.keys() == ref.keys()
    assert out["logit_log_var"].shape == (5, 2, 4 if per_class else 1, 6, 7)
    assert out["logits"].dtype == torch.float32
    _close(out, ref)
    assert (out["noise_aleatoric"] > 0).float().mean() > 0.7  # finite S: a few pixels clamp to 0


def test_zero_sigma_equals_no_noise(make_model, image):
    model = _hetero(make_model, scale=0.0, shift=-80.0)  # σ = e^-40: f + σε == f in float32
    plain = MCSampler(model, samples=4, seed=1)(image)
    noisy = MCSampler(model, samples=4, seed=1, noise_samples=5)(image)
    assert noisy.keys() == plain.keys() | {"noise_aleatoric"}
    _close(plain, noisy, atol=1e-6, keys=plain.keys())
    assert noisy["noise_aleatoric"].abs().max() < 1e-6


def test_chunk_invariance_and_naive_loop(make_model, image):
    model = _hetero(make_model, shift=1.0)
    kw = dict(samples=7, seed=4, noise_samples=3)
    tiny = MCSampler(model, memory_budget_mb=1e-4, **kw)
    large = MCSampler(model, memory_budget_mb=64.0, **kw)
    a, b = tiny(image), large(image)
    b = large(image)  # second call: measurement cached, all 7 samples in one chunk
    assert (tiny.last_chunk_size, large.last_chunk_size) == (1, 7)
    _close(a, b)
    _close(a, naive_mc(model, image, **kw))
    _close(a, MCSampler(model, use_split=False, memory_budget_mb=1e-4, **kw)(image))
    # the CPU estimate counts the noise temporaries (5 more copies of the logits per sample)
    plain = MCSampler(model, samples=7, seed=4)
    plain(image)
    extra = next(iter(large._bytes_per_sample.values())) - next(
        iter(plain._bytes_per_sample.values())
    )
    assert extra == 5 * 4 * image.shape[0] * 4 * image.shape[2] * image.shape[3]


def test_decomposition_holds_with_noise(make_model, image):
    out = MCSampler(_hetero(make_model, shift=2.0), samples=6, noise_samples=4)(image)
    assert (out["epistemic"] >= 0).all() and (out["noise_aleatoric"] >= 0).all()
    torch.testing.assert_close(
        out["entropy"], out["aleatoric"] + out["epistemic"], atol=1e-6, rtol=0
    )
    assert (out["noise_aleatoric"] <= out["aleatoric"] + 1e-6).all()


def test_larger_sigma_more_aleatoric_less_confident(make_model):
    x = torch.randn(1, 3, 12, 12, generator=torch.Generator().manual_seed(7))
    # same weights, masks and ε; only σ differs (log σ² shifted by 4)
    # (ε is shared by the T samples, so S alone sets the noise's Monte-Carlo error)
    low = MCSampler(_hetero(make_model, shift=-2.0), samples=6, noise_samples=64)(x)
    high = MCSampler(_hetero(make_model, shift=2.0), samples=6, noise_samples=64)(x)
    for key in ("aleatoric", "noise_aleatoric"):
        assert high[key].mean() > low[key].mean() + 0.05, key
        assert (high[key] > low[key]).float().mean() > 0.9, key
    p_low, p_high = low["probs"].amax(1), high["probs"].amax(1)
    assert p_high.mean() < p_low.mean() - 0.02
    assert (p_high < p_low).float().mean() > 0.9


@pytest.mark.parametrize("noise", [0, 4])
def test_calibrator_is_applied_to_every_sample(make_model, image, noise):
    model = _hetero(make_model)
    tau = torch.tensor([0.5, 1.0, 2.0, 1.5])
    calls = []

    def temperature(z, base=None):
        calls.append(base)
        return z / tau.view(1, -1, 1, 1)

    kw = dict(samples=5, seed=3, noise_samples=noise, return_logits=True)
    by_calibrator = MCSampler(model, calibrator=temperature, **kw)(image)
    by_temperature = MCSampler(model, temperature=tau, **kw)(image)
    _close(by_calibrator, by_temperature)
    # base is always the raw noise-free logits of the chunk: (k * B, C, H, W)
    logits = by_calibrator["logits"].flatten(0, 1)
    assert len(calls) == 2 * (1 + noise)  # first call: the measuring sample, then the other 4
    for base in calls:
        assert base is not None and base.shape[1:] == logits.shape[1:]
        assert any(torch.equal(base, logits[i : i + len(base)]) for i in (0, 2))
    if noise:
        # a scalar temperature applies to the noisy logits, as the direct stack does
        scalar = MCSampler(model, temperature=1.7, **kw)(image)
        _close(scalar, _direct(model, image, 5, noise, seed=3, tau=1.7), keys=scalar.keys())


def test_temporal_decay_zero_and_history(make_model):
    model = _hetero(make_model, task="joint", shift=1.0)
    g = torch.Generator().manual_seed(1)
    frames = [torch.randn(1, 3, 6, 7, generator=g) for _ in range(3)]
    fresh = MCSampler(model, samples=3, noise_samples=4)
    temporal = TemporalMC(model, fresh_samples=3, decay=0.0, noise_samples=4)
    for n, x in enumerate(frames):
        _close(temporal(x), fresh(x, first_sample=3 * n), atol=0)
    # with history (no frame: plain decay d) every mean is (m_1 + d m_0) / (1 + d)
    d, x = 0.5, frames[0]
    temporal = TemporalMC(model, fresh_samples=3, decay=d, noise_samples=4, reset_samples=3)
    temporal(x)
    fused = temporal(x)
    m0, m1 = fresh(x, first_sample=0), fresh(x, first_sample=3)
    # (noise_aleatoric is a clamped mean: compare where neither frame's mean was clamped)
    unclamped = (m0["noise_aleatoric"] > 0) & (m1["noise_aleatoric"] > 0)
    assert unclamped.float().mean() > 0.6
    for key in ("probs", "aleatoric", "noise_aleatoric", "logit_var", "depth"):
        expect = (m1[key] + d * m0[key]) / (1 + d)
        keep = unclamped if key == "noise_aleatoric" else torch.ones_like(expect, dtype=bool)
        torch.testing.assert_close(fused[key][keep], expect[keep], atol=1e-6, rtol=1e-5, msg=key)


def test_bad_noise_arguments(make_model):
    model = _hetero(make_model)
    with pytest.raises(ConfigError, match="noise_samples"):
        MCSampler(model, noise_samples=-1)
    with pytest.raises(ConfigError, match="calibrator"):
        MCSampler(model, calibrator=2.0)
    with pytest.raises(ConfigError, match="either a calibrator or a temperature"):
        MCSampler(model, calibrator=lambda z, base=None: z, temperature=2.0)


def test_noise_ignored_without_learned_variance(make_model, image):
    model = make_model()  # not heteroscedastic: nothing to integrate
    plain = MCSampler(model, samples=3)(image)
    noisy = MCSampler(model, samples=3, noise_samples=4)(image)
    assert noisy.keys() == plain.keys()
    _close(plain, noisy, atol=0)
