"""U-Net prepare_suffix: precomputed skip halves, folded BN and low-resolution up-convolution
give the same suffix as the plain path, with the same masks; training and weights untouched."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seguncert.config import ModelConfig
from seguncert.models import build_model, mc_dropout_mode, repeat_state
from seguncert.models.decoder_ops import fold_bn, up2_conv3x3
from seguncert.models.unet import DecoderBlock
from seguncert.uncertainty.masks import SeededDropout

SMALL = dict(width=16, decoder_channels=[32, 16, 16, 8, 8])


def calibrated_unet(preset: str, seed: int = 0, **kw) -> nn.Module:
    """A small U-Net whose BatchNorm statistics come from data (unit-scale features, so that
    dropout visibly changes the logits) and whose BN affine parameters are random."""
    torch.manual_seed(seed)
    m = build_model(ModelConfig(arch="unet", dropout=preset, num_classes=5, **SMALL, **kw))
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.momentum = None
            mod.reset_running_stats()
            nn.init.uniform_(mod.weight, 0.5, 1.5)
            nn.init.normal_(mod.bias, 0.0, 0.2)
    m.train()
    with torch.no_grad():
        m(torch.randn(4, 3, 64, 96))
    return m.eval()


def test_up2_conv3x3_equals_upsample_then_conv():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 7, 9, generator=g)
    w = torch.randn(4, 5, 3, 3, generator=g)
    b = torch.randn(4, generator=g)
    ref = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), w, b, padding=1)
    got = up2_conv3x3(x, w, b)
    assert got.shape == ref.shape == (3, 4, 14, 18)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(up2_conv3x3(x, w), ref - b.view(1, -1, 1, 1), atol=1e-5, rtol=1e-5)


def test_fold_bn_equals_conv_then_eval_bn():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 6, 3, padding=1, bias=False)
    bn = nn.BatchNorm2d(6).eval()
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.2, 2.0)
    nn.init.normal_(bn.weight)
    nn.init.normal_(bn.bias)
    x = torch.randn(2, 3, 5, 5)
    w, shift = fold_bn(conv.weight, bn)
    with torch.no_grad():
        ref = bn(conv(x))
        got = F.conv2d(x, w, shift, padding=1)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def _suffix(m, x, samples, prepare: bool, seed=0):
    with torch.no_grad(), mc_dropout_mode(m), SeededDropout(m, seed) as masks:
        masks.set_samples(range(samples))
        state = m.forward_prefix(x)
        if prepare:
            state = m.prepare_suffix(state)
        return m.forward_suffix(repeat_state(state, samples))


@pytest.mark.parametrize("preset", ["decoder", "central", "all", "encoder"])
@pytest.mark.parametrize("size", [(64, 96), (40, 56)])  # every x2 exact / some blocks not
def test_prepared_suffix_equals_plain_suffix(preset, size):
    m = calibrated_unet(preset)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        prepared = m.prepare_suffix(m.forward_prefix(x))
    n_blocks = sum(isinstance(s, DecoderBlock) for s in m.stages[m.split_index :])
    assert len(prepared["skip_terms"]) == n_blocks - 1  # the last block has no skip
    assert prepared["skips"] == [] and prepared["shared"] == ("skip_terms",)
    rep = repeat_state(prepared, 3)
    assert all(t.shape[0] == 2 for t in rep["skip_terms"])  # broadcast, not replicated
    plain, fast = _suffix(m, x, 3, False), _suffix(m, x, 3, True)
    assert plain.keys() == fast.keys()
    for k in plain:
        torch.testing.assert_close(fast[k], plain[k], atol=2e-5, rtol=1e-5, msg=k)
    assert not torch.allclose(plain["logits"][:2], plain["logits"][2:4])  # masks differ


def test_prepared_path_with_batch_statistics_bn():
    # BN in train mode cannot be folded: the blocks then apply their BN modules to the
    # (samples x batch) activations, as the plain path does.
    m = calibrated_unet("all")
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(2))

    def run(prepare: bool):
        model = copy.deepcopy(m)
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.train()
        with torch.no_grad(), SeededDropout(model, 0) as masks:
            masks.set_samples(range(2))
            state = model.forward_prefix(x)
            if prepare:
                state = model.prepare_suffix(state)
                assert not any(b._foldable() for b in model.stages if isinstance(b, DecoderBlock))
            return model.forward_suffix(repeat_state(state, 2))

    plain, fast = run(False), run(True)
    for k in plain:
        torch.testing.assert_close(fast[k], plain[k], atol=2e-5, rtol=1e-5, msg=k)


def test_state_dict_and_forward_untouched():
    m = calibrated_unet("central")
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(4))
    keys = list(m.state_dict())
    with torch.no_grad():
        before = m(x)["logits"]
    _suffix(m, x, 2, True)
    assert list(m.state_dict()) == keys  # nothing registered: old checkpoints still load
    fresh = build_model(ModelConfig(arch="unet", dropout="central", num_classes=5, **SMALL))
    fresh.load_state_dict(m.state_dict())  # strict: same names and shapes as ever
    with torch.no_grad():
        assert torch.equal(m(x)["logits"], before)  # forward never takes the prepared path


def test_training_step_unchanged_by_prepared_path():
    # The train-mode forward is the concat path (no "skip_terms"): gradients are those of
    # cat + conv, bit for bit, whether or not the sampler prepared a suffix before.
    a, b = calibrated_unet("decoder"), calibrated_unet("decoder")
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(3))
    _suffix(b, x, 2, True)  # b has been sampled with the prepared suffix
    grads = []
    for m in (a, b):
        m.train()
        torch.manual_seed(7)
        m.zero_grad()
        m(x)["logits"].square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        assert torch.equal(grads[0][n], grads[1][n]), n


def test_folded_weights_are_kept_between_samples_and_follow_weight_changes():
    # The prepared path derives folded / phase weights once; an in-place change of a weight
    # or a BN statistic (optimiser step, load_state_dict) must be seen on the next call.
    m = calibrated_unet("central")
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    block = next(s for s in m.stages[m.split_index :] if isinstance(s, DecoderBlock))
    with torch.no_grad():
        first = _suffix(m, x, 2, True)["logits"]
        kept = block._derived[1][0]
        again = _suffix(m, x, 2, True)["logits"]
        assert block._derived[1][0] is kept  # not re-derived
        torch.testing.assert_close(again, first)
        block.convs[0].weight.mul_(1.5)
        block.convs[4].running_var.mul_(2.0)
        changed = _suffix(m, x, 2, True)["logits"]
        assert block._derived[1][0] is not kept
        torch.testing.assert_close(changed, _suffix(m, x, 2, False)["logits"], atol=2e-5, rtol=1e-5)
        assert not torch.allclose(changed, first)
    m.load_state_dict(copy.deepcopy(calibrated_unet("central", seed=3).state_dict()))
    with torch.no_grad():
        fresh = _suffix(m, x, 2, True)["logits"]
        torch.testing.assert_close(fresh, _suffix(m, x, 2, False)["logits"], atol=2e-5, rtol=1e-5)
