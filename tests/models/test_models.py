"""Architectures x dropout presets: shapes, the prefix/suffix contract, MC-dropout mode."""

from __future__ import annotations

import functools

import pytest
import torch

from seguncert.config import ModelConfig
from seguncert.models import MCDropout, build_model, mc_dropout_mode, repeat_state
from seguncert.models.base import has_active_dropout

ARCHS = ("segnet_basic", "segnet", "unet")
PRESETS = ("central", "encoder", "decoder", "classifier", "all", "none")
# Number of MCDropout layers each preset must insert (never two on the same tensor).
N_DROPOUT = {
    "segnet_basic": {
        "central": 4,
        "encoder": 4,
        "decoder": 4,
        "classifier": 1,
        "all": 8,
        "none": 0,
    },
    "segnet": {"central": 6, "encoder": 5, "decoder": 5, "classifier": 1, "all": 10, "none": 0},
    "unet": {"central": 3, "encoder": 1, "decoder": 5, "classifier": 1, "all": 6, "none": 0},
}
# Index of the first stage holding a dropout (a dropout on stage k's output lives in k+1). Stages: segnet_basic enc1-4, dec4-1, head (9);
# segnet enc1-5, dec5-1, head (11); unet encoder, bottleneck, dec1-5, head (8).
SPLIT = {
    "segnet_basic": {"central": 3, "encoder": 1, "decoder": 5, "classifier": 8, "all": 1},
    "segnet": {"central": 3, "encoder": 1, "decoder": 6, "classifier": 10, "all": 1},
    "unet": {"central": 1, "encoder": 1, "decoder": 3, "classifier": 7, "all": 1},
}
SMALL = dict(width=16, decoder_channels=[32, 16, 16, 8, 8])


@functools.cache
def _cached(arch: str, preset: str, task: str, depth_dist: str):
    torch.manual_seed(0)
    cfg = ModelConfig(arch=arch, dropout=preset, task=task, num_classes=5, **SMALL)
    return build_model(cfg, depth_dist=depth_dist)


def model(arch: str, preset: str, task: str = "segmentation", depth_dist: str = "laplace"):
    # Built once per test session (VGG is 29M parameters); every test gets it in eval mode.
    return _cached(arch, preset, task, depth_dist).eval()


def x64(b: int = 1) -> torch.Tensor:
    return torch.randn(b, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("preset", PRESETS)
def test_forward_shapes_prefix_suffix_and_split(arch, preset):
    m = model(arch, preset)
    x = x64(2)
    with torch.no_grad():
        out = m(x)
        split = m.forward_suffix(m.forward_prefix(x))
    assert set(out) == {"logits", "logit_log_var"}
    assert out["logits"].shape == (2, 5, 64, 64)
    assert out["logit_log_var"].shape == (2, 1, 64, 64)
    for k in out:
        assert torch.equal(out[k], split[k]), k
    n_drop = sum(isinstance(mod, MCDropout) for mod in m.modules())
    assert n_drop == N_DROPOUT[arch][preset]
    expected = SPLIT[arch].get(preset, len(m.stages))
    assert m.split_index == expected
    assert not any(has_active_dropout(s) for s in m.stages[: m.split_index])


@pytest.mark.parametrize("arch", ARCHS)
def test_classifier_suffix_is_only_the_head(arch):
    m = model(arch, "classifier")
    assert m.split_index == len(m.stages) - 1
    (head,) = m.stages[m.split_index :]
    convs = [mod for mod in head.modules() if isinstance(mod, torch.nn.Conv2d)]
    assert all(c.kernel_size == (1, 1) for c in convs)  # suffix = dropout + 1x1 convs


@pytest.mark.parametrize("arch", ARCHS)
def test_joint_and_depth_heads(arch):
    x = x64()
    with torch.no_grad():
        joint = model(arch, "classifier", "joint")(x)
        depth_l1 = model(arch, "classifier", "depth", "l1")(x)
    assert set(joint) == {"logits", "logit_log_var", "depth_loc", "depth_log_scale"}
    assert joint["depth_loc"].shape == joint["depth_log_scale"].shape == (1, 1, 64, 64)
    assert (joint["depth_loc"] > 0).all()
    assert set(depth_l1) == {"depth_loc"}


def test_homoscedastic_model_has_no_log_var():
    cfg = ModelConfig(arch="segnet_basic", heteroscedastic=False, num_classes=3, width=8)
    with torch.no_grad():
        out = build_model(cfg).eval()(x64())
    assert set(out) == {"logits"}


@pytest.mark.parametrize(
    "arch,size", [("segnet_basic", (40, 56)), ("segnet", (96, 64)), ("unet", (40, 56))]
)
def test_sizes_not_divisible_by_the_total_stride(arch, size):
    m = model(arch, "central")
    with torch.no_grad():
        out = m(torch.randn(1, 3, *size))
    assert out["logits"].shape[-2:] == size


@pytest.mark.parametrize("encoder", ["resnet18", "resnet34", "mobilenet_v2", "efficientnet-b0"])
def test_unet_smp_encoders(encoder):
    cfg = ModelConfig(arch="unet", encoder=encoder, dropout="central", num_classes=4, **SMALL)
    m = build_model(cfg).eval()
    with torch.no_grad():
        x = x64()
        out = m(x)
        split = m.forward_suffix(m.forward_prefix(x))
    assert out["logits"].shape == (1, 4, 64, 64)
    assert torch.equal(out["logits"], split["logits"])


@pytest.mark.parametrize("arch", ARCHS)
def test_mc_dropout_mode_flags_bn_and_sampling(arch):
    m = model(arch, "central")
    m.train()
    m.stages[0].training = True
    bn_stats = {k: v.clone() for k, v in m.state_dict().items() if "running" in k}
    before = {mod: mod.training for mod in m.modules()}
    x = x64()
    with torch.no_grad(), mc_dropout_mode(m):
        for mod in m.modules():
            if isinstance(mod, MCDropout):
                assert mod.training
            elif isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                assert not mod.training
        a, b = m(x)["logits"], m(x)["logits"]
    assert not torch.equal(a, b)  # dropout samples differ
    assert {mod: mod.training for mod in m.modules()} == before  # flags restored
    for k, v in m.state_dict().items():
        if "running" in k:
            assert torch.equal(v, bn_stats[k]), k  # MC passes never update BN statistics
    m.eval()
    with torch.no_grad():
        assert torch.equal(m(x)["logits"], m(x)["logits"])  # plain eval is deterministic


@pytest.mark.parametrize("arch", ARCHS)
def test_repeat_state_suffix_matches_separate_passes(arch):
    m = model(arch, "central")
    x = x64(2)
    with torch.no_grad():
        ref = m(x)
        state = repeat_state(m.forward_prefix(x), 3)
        rep = m.forward_suffix(state)
        for k in range(3):
            for key in ref:
                torch.testing.assert_close(rep[key][2 * k : 2 * k + 2], ref[key])
        with mc_dropout_mode(m):
            samples = m.forward_suffix(repeat_state(m.forward_prefix(x), 3))["logits"]
    assert samples.shape == (6, 5, 64, 64)
    assert not torch.equal(samples[0:2], samples[2:4])  # independent masks per replica


def test_prefix_state_not_mutated_by_suffix():
    m = model("unet", "central")
    with torch.no_grad():
        state = m.forward_prefix(x64())
        n_skips = len(state["skips"])
        m.forward_suffix(state)
        m.forward_suffix(state)  # reusable: stages build new dicts instead of popping
    assert len(state["skips"]) == n_skips


def test_depth_head_reaches_far_depths_in_few_steps():
    # Log-space depth: 100 Adam steps at lr 0.01 take the ~1 m start past 20 m towards 40 m; a
    # softplus output moves about lr x (sum of features) per step and stays under 6 m.
    from seguncert.models.heads import RegressionHead

    torch.manual_seed(0)
    head = RegressionHead(8, "l1")
    feats = torch.rand(2, 8, 4, 4)
    target = torch.full((2, 1, 4, 4), 40.0)
    opt = torch.optim.Adam(head.parameters(), lr=0.01)
    for _ in range(100):
        loss = (head(feats, (4, 4))["depth_loc"] - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(head(feats, (4, 4))["depth_loc"].detach().mean()) > 20.0
