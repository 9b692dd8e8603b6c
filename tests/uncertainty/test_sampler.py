"""MCSampler: prefix once, chunking/budget independence, seeding, BN in eval, cross-checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from seguncert.errors import ConfigError, SeguncertError
from seguncert.models.base import MCDropout, mc_dropout_mode
from seguncert.uncertainty.maps import (
    expected_entropy,
    mutual_information,
    predicted_class_variance,
    predictive_entropy,
    regression_uncertainty,
)
from seguncert.uncertainty.masks import SeededDropout
from seguncert.uncertainty.sampler import MCSampler, naive_mc

SEG_KEYS = {"probs", "pred", "entropy", "aleatoric", "epistemic", "prob_var"}


def _seeded_outputs(model, x, samples: int, seed: int = 0) -> list[dict]:
    """Raw per-sample outputs of full passes with the sampler's per-sample masks."""
    outs = []
    with torch.no_grad(), mc_dropout_mode(model), SeededDropout(model, seed) as masks:
        for t in range(samples):
            masks.set_samples(range(t, t + 1))
            outs.append(model(x))
    return outs


def _close(a: dict, b: dict, atol=1e-5):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-5, msg=k)


def test_prefix_runs_once_and_suffix_is_chunked(make_model, image):
    model = make_model()
    calls = {"prefix": 0, "suffix": 0}

    def count(name):
        def hook(module, args, output):
            calls[name] += 1

        return hook

    model.stages[0].register_forward_hook(count("prefix"))
    model.stages[1].register_forward_hook(count("suffix"))
    sampler = MCSampler(model, samples=7, memory_budget_mb=1.0)
    sampler(image)
    # first call: 1 measuring sample, then the other 6 in one chunk (tiny model, 1 MB budget)
    assert calls == {"prefix": 1, "suffix": 2}
    assert sampler.last_chunk_size == 6
    sampler(image)
    assert calls == {"prefix": 2, "suffix": 3}  # measurement cached: all 7 in one chunk


@pytest.mark.parametrize("task", ["segmentation", "depth", "joint"])
def test_independent_of_chunk_size_and_budget(make_model, image, task):
    model = make_model(task=task, hetero=True)
    probe = MCSampler(model, samples=9)
    probe(image)
    per_sample_mb = next(iter(probe._bytes_per_sample.values())) / 2**20
    results, chunks = [], []
    for factor in (0.5, 3.5, 100.0):  # chunks of 1, 3, all
        sampler = MCSampler(model, samples=9, memory_budget_mb=per_sample_mb * factor)
        results.append(sampler(image))
        results.append(sampler(image))  # second call: cached estimate, chunk size from the start
        chunks.append(sampler.last_chunk_size)
    assert chunks == [1, 3, 9]
    for r in results[1:]:
        _close(results[0], r)
    _close(results[0], MCSampler(model, samples=9, use_split=False, memory_budget_mb=0.05)(image))


def test_seed_reproducible_and_caller_rng_untouched(make_model, image):
    model = make_model()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = MCSampler(model, samples=5, seed=3)(image)
    assert torch.equal(torch.get_rng_state(), before)
    b = MCSampler(model, samples=5, seed=3)(image)
    c = MCSampler(model, samples=5, seed=4)(image)
    for k in a:
        assert torch.equal(a[k], b[k])
    assert not torch.allclose(a["probs"], c["probs"])


def test_batchnorm_stays_in_eval_and_modes_restored(make_model, image):
    model = make_model()
    model.train()
    bn = model.stages[0].bn
    stats = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
    MCSampler(model, samples=4)(image)
    naive_mc(model, image, samples=2)
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])
    assert torch.equal(bn.num_batches_tracked, stats[2])
    assert all(m.training for m in model.modules())
    model.eval()
    MCSampler(model, samples=2)(image)
    assert not any(m.training for m in model.modules())


def test_seeded_naive_mc_equals_sampler(make_model, image):
    model = make_model(task="joint", hetero=True)
    fast = MCSampler(model, samples=6, seed=11, memory_budget_mb=4.0)(image)
    _close(fast, naive_mc(model, image, samples=6, seed=11))


def test_native_dropout_agrees_in_distribution(make_model):
    # torch's own dropout masks (textbook loop) vs the seeded per-sample masks: same mean
    # within MC error (both T = 300; |diff| << the per-pixel std of a single sample).
    model = make_model(width=4, p=0.3)
    x = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    textbook = naive_mc(model, x, samples=300, return_samples=True)
    fast = MCSampler(model, samples=300, memory_budget_mb=64.0)(x)
    sd = textbook["samples"].std(0)
    err = (textbook["probs"] - fast["probs"]).abs()
    assert (err <= 4 * sd / 300**0.5 * 2**0.5 + 1e-4).float().mean() > 0.97
    assert (fast["epistemic"] > 0).all()


def test_one_sample_without_dropout_equals_forward(make_model, image):
    model = make_model(task="joint", p=0.0)
    with torch.no_grad():
        ref = model(image)
    out = MCSampler(model, samples=1)(image)
    torch.testing.assert_close(out["probs"], torch.softmax(ref["logits"], 1))
    torch.testing.assert_close(out["depth"], ref["depth_loc"][:, 0])
    assert out["epistemic"].abs().max() < 1e-6 and out["prob_var"].abs().max() == 0
    # no active dropout: T samples are equal, so T = 5 gives the same maps (sampled once)
    five = MCSampler(model, samples=5, return_samples=True)(image)
    torch.testing.assert_close(five["probs"], out["probs"])
    assert five["samples"].shape[0] == 5


def test_return_samples_match_maps_and_temperature(make_model, image):
    model = make_model(classes=3, hetero=True)
    temp = torch.tensor([0.5, 1.0, 2.0])
    out = MCSampler(model, samples=5, temperature=temp, return_samples=True)(image)
    probs = out["samples"]
    assert probs.shape == (5, 2, 3, 6, 7)
    assert out.keys() == SEG_KEYS | {"logit_var", "samples"}
    torch.testing.assert_close(out["probs"], probs.mean(0))
    torch.testing.assert_close(out["entropy"], predictive_entropy(probs.mean(0)))
    torch.testing.assert_close(out["aleatoric"], expected_entropy(probs), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["epistemic"], mutual_information(probs), atol=1e-5, rtol=0)
    torch.testing.assert_close(out["prob_var"], predicted_class_variance(probs), atol=1e-6, rtol=0)
    # the temperature divides each sample's logits before the softmax
    logits = torch.stack([o["logits"] for o in _seeded_outputs(model, image, 5)])
    expect = torch.softmax(logits / temp.view(1, 1, 3, 1, 1), 2)
    torch.testing.assert_close(probs, expect, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dist", ["laplace", "gaussian", "l1"])
def test_depth_maps(make_model, image, dist):
    model = make_model(task="depth", depth_dist=dist)
    out = MCSampler(model, samples=6, return_samples=True)(image)
    assert out.keys() == {
        "depth",
        "aleatoric_var",
        "epistemic_var",
        "total_var",
        "aleatoric",
        "epistemic",
        "samples",
    }
    locs, variances = [], []
    for o in _seeded_outputs(model, image, 6):
        locs.append(o["depth_loc"])
        if dist != "l1":
            scale = o["depth_log_scale"].exp()
            variances.append(2 * scale**2 if dist == "laplace" else scale**2)
    direct = regression_uncertainty(
        torch.stack(locs), torch.stack(variances) if variances else None
    )
    for k, v in direct.items():
        torch.testing.assert_close(out[k], v, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out["aleatoric"], direct["aleatoric_var"].sqrt())
    torch.testing.assert_close(out["samples"], torch.stack(locs)[:, :, 0])


def test_joint_keys(make_model, image):
    out = MCSampler(make_model(task="joint"), samples=3, return_samples=True)(image)
    depth = {"depth", "depth_aleatoric_var", "depth_epistemic_var", "depth_total_var"}
    assert out.keys() == SEG_KEYS | depth | {"samples", "depth_samples"}
    torch.testing.assert_close(
        out["depth_total_var"], out["depth_aleatoric_var"] + out["depth_epistemic_var"]
    )


def test_bad_input(make_model, image):
    model = make_model()
    with pytest.raises(ConfigError, match="samples"):
        MCSampler(model, samples=0)
    with pytest.raises(ConfigError, match="temperature"):
        MCSampler(model, temperature=0.0)
    with pytest.raises(SeguncertError, match="B, 3, H, W"):
        MCSampler(model, samples=2)(image[0])
    with pytest.raises(ConfigError, match="4 classes"):
        MCSampler(model, samples=2, temperature=torch.ones(3))(image)
    with pytest.raises(SeguncertError, match="logits"):
        MCSampler(nn.Sequential(MCDropout(0.5)), samples=2, use_split=False)(image)


# --- cheaper arithmetic, same numbers: the package's U-Net through every fast path -------------


def _unet(preset: str, seed: int = 0, **kw):
    """A small U-Net with data-calibrated BatchNorm (unit-scale features, so that dropout moves
    the logits) and a log-variance head that reaches well past +-1."""
    from seguncert.config import ModelConfig
    from seguncert.models.build import build_model

    torch.manual_seed(seed)
    cfg = ModelConfig(
        arch="unet", dropout=preset, num_classes=5, decoder_channels=[32, 16, 16, 8, 8]
    )
    m = build_model(cfg)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.momentum = None
            mod.reset_running_stats()
    m.train()
    with torch.no_grad():
        m(torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(seed)))
        m.stages[-1].seg.log_var.weight.mul_(kw.get("lv_scale", 3.0))
    return m.eval()


def _close_rel(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        if k == "logit_var":  # exp of a log variance up to +-10: compare relatively
            torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=2e-5, msg=k)
        else:
            torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-5, msg=k)


@pytest.mark.parametrize("preset", ["classifier", "decoder", "central", "all"])
def test_unet_fast_paths_equal_naive_loop(preset):
    model = _unet(preset)
    x = torch.randn(2, 3, 40, 56, generator=torch.Generator().manual_seed(3))  # odd sizes inside
    temp = torch.tensor([0.7, 1.0, 1.6, 1.2, 0.9])
    sampler = MCSampler(model, samples=9, seed=4, temperature=temp)
    assert sampler._head is not None  # the head runs as a matmul per sample
    calls = []
    model.stages[-1].register_forward_hook(lambda *a: calls.append(1))
    fast = sampler(x)
    assert calls == []  # ... never as a module
    slow = naive_mc(model, x, samples=9, seed=4, temperature=temp)
    assert len(calls) == 9
    _close_rel(fast, slow)
    assert fast["epistemic"].mean() > 1e-3 and fast["logit_var"].max() > 2.0


def test_fast_head_falls_back_where_it_cannot_reproduce_the_head(make_model):
    model = _unet("classifier")
    x = torch.randn(1, 3, 32, 64, generator=torch.Generator().manual_seed(5))
    fast = MCSampler(model, samples=6, seed=2)
    kept = MCSampler(model, samples=6, seed=2, return_samples=True)  # per-sample p kept
    noisy = MCSampler(model, samples=6, seed=2, noise_samples=2)
    custom = MCSampler(model, samples=6, seed=2, calibrator=lambda z, base=None: z * 0.5)
    assert fast._head is not None
    assert kept._head is None and noisy._head is None and custom._head is None
    a, b = fast(x), kept(x)
    _close_rel(a, {k: v for k, v in b.items() if k != "samples"})
    torch.testing.assert_close(b["samples"].mean(0), a["probs"], atol=1e-6, rtol=1e-5)
    _close_rel(custom(x), naive_mc(model, x, 6, seed=2, temperature=2.0))
    assert MCSampler(make_model(), samples=2)._head is None  # the toy model's head is no HeadStage


def test_fast_head_extreme_logits_and_tiny_dropout():
    # logits of +-several hundred (exp of them overflows float32): still finite and equal to
    # the naive loop
    model = _unet("classifier")
    with torch.no_grad():
        model.stages[-1].seg.logits.weight.mul_(300.0)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    fast, slow = MCSampler(model, samples=8, seed=1)(x), naive_mc(model, x, 8, seed=1)
    assert all(torch.isfinite(v.float()).all() for v in fast.values())
    _close_rel(fast, slow)
    # p < 1/512: SeededDropout keeps every unit (keep threshold 256), so does the fast head
    model.stages[-1].drop.p = 1e-3
    _close_rel(MCSampler(model, samples=3, seed=1)(x), naive_mc(model, x, 3, seed=1))


def test_cpu_chunks_stay_cache_sized():
    sampler = MCSampler(nn.Sequential(MCDropout(0.5)), samples=20, memory_budget_mb=1024.0)
    per_sample = 100 * 2**20  # e.g. a 360x480 U-Net decoder suffix
    assert sampler.chunk_size(per_sample, 20, "cpu") == 1
    assert sampler.chunk_size(per_sample, 20, "cuda") == 10  # only the budget on a GPU
    assert sampler.chunk_size(2**20, 20, "cpu") == 20  # small frames still batch
    big = MCSampler(nn.Sequential(MCDropout(0.5)), samples=20, cpu_chunk_mb=1e9)
    assert big.chunk_size(per_sample, 20, "cpu") == 10


@pytest.mark.parametrize("base2", [False, True])
def test_update_logits_equals_update_from_probabilities(base2):
    from seguncert.uncertainty.maps import SegmentationAccumulator

    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 2, 6, 3, 5, generator=g) * 6  # 4 samples, B=2, C=6
    lv = torch.randn(4, 2, 1, 3, 5, generator=g)
    ref, fast = SegmentationAccumulator(), SegmentationAccumulator()
    ref.update(torch.softmax(z, 2), lv, log_probs=torch.log_softmax(z, 2))
    for t in range(4):
        zt = z[t] * 1.4426950408889634 if base2 else z[t].clone()
        p = fast.update_logits(zt, lv[t], base2=base2)
        torch.testing.assert_close(p, torch.softmax(z[t], 1), atol=1e-6, rtol=1e-5)
    a, b = ref.finalize(), fast.finalize()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=2e-6, rtol=1e-5, msg=k)


def test_fast_head_tiles_and_draw_groups(monkeypatch):
    # several pixel tiles (the last one ragged) and random bytes drawn ahead in groups of 3
    from seguncert.uncertainty import linear_head

    monkeypatch.setattr(linear_head, "_TILE_PIXELS", 700)
    model = _unet("classifier")
    x = torch.randn(2, 3, 40, 56, generator=torch.Generator().manual_seed(8))  # 2240 px
    monkeypatch.setattr(linear_head, "_DRAW_BYTES", 3 * 2 * 8 * 40 * 56)  # B F H W bytes x 3
    fast = MCSampler(model, samples=10, seed=5)(x)
    _close_rel(fast, naive_mc(model, x, samples=10, seed=5))
    decoder = _unet("decoder")  # per-sample features, tiled the same way
    _close_rel(MCSampler(decoder, samples=4, seed=5)(x), naive_mc(decoder, x, 4, seed=5))


@pytest.mark.parametrize("inference", [False, True])
def test_fast_head_parallel_draws_are_the_hooks_bytes(inference):
    # with several torch threads the masks' random bytes are drawn by a thread pool, one
    # generator per thread: the same bytes as the dropout hook's single generator; under
    # torch.inference_mode (as tools/infer.py runs) the pool's threads must enter it too
    model = _unet("classifier")
    x = torch.randn(1, 3, 32, 48, generator=torch.Generator().manual_seed(9))
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        with torch.inference_mode(inference):
            fast = MCSampler(model, samples=7, seed=6)(x)
    finally:
        torch.set_num_threads(threads)
    _close_rel(fast, naive_mc(model, x, samples=7, seed=6))
