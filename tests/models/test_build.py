"""build_model / model_from_spec, config errors, heads, and the VGG ImageNet weight mapping."""

from __future__ import annotations

import json

import pytest
import torch

from seguncert.config import ModelConfig
from seguncert.errors import CheckpointError, ConfigError, SeguncertError
from seguncert.models import build_model, model_from_spec
from seguncert.models.heads import HeadStage, RegressionHead, SegmentationHead
from seguncert.models.segnet import SegNetVGG


def _randomise_bn(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(3)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.copy_(torch.randn(mod.running_mean.shape, generator=g) * 0.1)
            mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g) + 0.5)


@pytest.mark.parametrize(
    "cfg,depth_dist",
    [
        (ModelConfig(arch="unet", task="joint", decoder_channels=[32, 16, 16, 8, 8]), "gaussian"),
        (ModelConfig(arch="segnet_basic", task="depth", width=8, dropout="all"), "l1"),
        (ModelConfig(arch="segnet", heteroscedastic=False, num_classes=4), "laplace"),
    ],
)
def test_spec_round_trip(cfg, depth_dist):
    torch.manual_seed(0)
    model = build_model(cfg, depth_dist=depth_dist)
    _randomise_bn(model)
    spec = json.loads(json.dumps(model.spec))  # JSON-able
    assert spec["encoder_weights"] is None and spec["depth_dist"] == depth_dist
    assert spec["arch"] == cfg.arch and spec["dropout"] == cfg.dropout
    rebuilt = model_from_spec(spec)
    assert rebuilt.spec == model.spec
    a, b = model.state_dict(), rebuilt.state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape for k in a)
    rebuilt.load_state_dict(a)
    x = torch.randn(1, 3, 64, 64)
    model.eval(), rebuilt.eval()
    with torch.no_grad():
        out, out2 = model(x), rebuilt(x)
    assert set(out) == set(out2)
    for k in out:
        assert torch.equal(out[k], out2[k]), k


def test_presets_share_state_dict_keys():
    base = dict(arch="unet", decoder_channels=[16, 8, 8, 8, 8])
    keys = {
        p: list(build_model(ModelConfig(dropout=p, **base)).state_dict())
        for p in ("none", "all", "central")
    }
    assert keys["none"] == keys["all"] == keys["central"]
    spec = build_model(ModelConfig(dropout="none", **base)).spec
    assert model_from_spec(spec, dropout="classifier").split_index == 7


@pytest.mark.parametrize(
    "cfg,match",
    [
        (ModelConfig(arch="deeplab"), "model.arch.*unet, segnet_basic, segnet"),
        (ModelConfig(arch="unet", encoder="resnet7"), "model.encoder.*resnet7"),
        (ModelConfig(arch="unet", decoder_channels=[8, 8]), "decoder_channels"),
        (ModelConfig(arch="unet", encoder_weights="imagenet21k"), "encoder_weights"),
        (ModelConfig(arch="segnet", encoder_weights="coco"), "encoder_weights"),
        (ModelConfig(arch="segnet_basic", encoder_weights="imagenet"), "encoder_weights"),
        (ModelConfig(arch="segnet_basic", dropout="middle"), "model.dropout"),
        (ModelConfig(arch="segnet_basic", dropout_p=1.0), "dropout_p"),
        (ModelConfig(arch="segnet_basic", num_classes=1), "num_classes"),
    ],
)
def test_config_errors_are_one_line(cfg, match):
    with pytest.raises(ConfigError, match=match) as info:
        build_model(cfg)
    assert "\n" not in str(info.value)


def test_bad_spec_and_depth_dist():
    with pytest.raises(CheckpointError, match="arch"):
        model_from_spec({"task": "segmentation"})
    with pytest.raises(ConfigError, match="loss.depth"):
        build_model(ModelConfig(arch="segnet_basic", width=8), depth_dist="cauchy")


def test_vgg_imagenet_weights_map_onto_encoder(monkeypatch):
    from torchvision.models import VGG16_BN_Weights
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(1)
    features = make_layers(cfgs["D"], batch_norm=True).eval()  # vgg16_bn().features
    _randomise_bn(features)
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    monkeypatch.setattr(VGG16_BN_Weights, "get_state_dict", lambda self, **kw: state)
    model = SegNetVGG(encoder_weights="imagenet", num_classes=3, dropout="none").eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        h = x
        for k in range(5):  # the encoder convs must equal VGG's up to each max-pool
            h = model.stages[k].convs(h)
            ref = features[: (0, 7, 14, 24, 34)[k] + len(model.stages[k].convs)](x)
            torch.testing.assert_close(h, ref)
            h = torch.nn.functional.max_pool2d(h, 2)

    def offline(self, **kw):
        raise OSError("network unreachable")

    monkeypatch.setattr(VGG16_BN_Weights, "get_state_dict", offline)
    with pytest.raises(SeguncertError, match="encoder_weights=null"):
        SegNetVGG(encoder_weights="imagenet")


def test_heads_resize_bound_and_name_parts():
    feats = torch.randn(2, 8, 16, 16) * 50  # large activations: outputs must stay bounded
    seg = SegmentationHead(8, 4, heteroscedastic=True)
    reg = RegressionHead(8, dist="gaussian")
    with torch.no_grad():
        s, r = seg(feats, (32, 32)), reg(feats, (32, 32))
    assert s["logits"].shape == (2, 4, 32, 32) and s["logit_log_var"].shape == (2, 1, 32, 32)
    assert s["logit_log_var"].abs().max() <= 10.0
    assert r["depth_loc"].shape == (2, 1, 32, 32) and (r["depth_loc"] > 0).all()
    assert r["depth_log_scale"].abs().max() <= 5.0
    assert {n for n, _ in seg.named_children()} == {"logits", "log_var"}
    assert {n for n, _ in reg.named_children()} == {"loc", "log_scale"}
    stage = HeadStage(8, "joint", 4, True, "laplace", torch.nn.Identity())
    out = stage({"x": feats, "input_size": torch.Size([64, 48])})
    assert out["logits"].shape[-2:] == (64, 48) and out["depth_loc"].shape[-2:] == (64, 48)
