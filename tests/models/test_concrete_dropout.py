"""Concrete dropout (Gal, Hron & Kendall 2017): relaxed masks, the regulariser against its
formula, hard masks for sampling, learned rates that survive a checkpoint, and a training run
that moves them."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from seguncert.config import Config, ModelConfig
from seguncert.data.common import DatasetMeta
from seguncert.errors import ConfigError
from seguncert.io import checkpoint as ck
from seguncert.losses.concrete import concrete_layers, concrete_regulariser, learned_rates
from seguncert.models.base import ConcreteDropout, MCDropout, mc_dropout_mode
from seguncert.models.build import build_model, model_from_spec
from seguncert.train.fit import fit
from seguncert.uncertainty.sampler import MCSampler, naive_mc
from tests.train.test_fit import tiny_cfg


def test_rate_reads_as_a_float_and_is_a_parameter():
    d = ConcreteDropout(0.3)
    assert isinstance(d, MCDropout) and d.p == pytest.approx(0.3, abs=1e-6)
    assert [n for n, _ in d.named_parameters()] == ["p_logit"] and d.p_logit.dim() == 0
    d.p = 0.1
    assert d.p == pytest.approx(0.1, abs=1e-6) and len(list(d.parameters())) == 1
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError):
            ConcreteDropout(bad)


def test_relaxed_mask_keeps_the_mean_and_carries_the_gradient():
    d = ConcreteDropout(0.3).train()
    torch.manual_seed(0)
    x = torch.ones(64, 16, 32, 32)
    y = d(x)
    # The relaxed keep mask (1 − z) has mean close to 1 − p at t = 0.1, rescaled by 1/(1 − p).
    assert y.mean().item() == pytest.approx(1.0, abs=0.02)
    assert ((y > 0.05) & (y < 1.3)).float().mean() < 0.2  # mostly near 0 or 1/(1 − p)
    assert d.channels == 16
    y.sum().backward()
    assert d.p_logit.grad is not None and d.p_logit.grad != 0


def test_hard_masks_without_gradients():
    d = ConcreteDropout(0.25).train()
    x = torch.ones(4, 8, 16, 16)
    with torch.no_grad():
        y = d(x)
    values = torch.unique(y).tolist()
    assert values == [0.0, pytest.approx(1 / 0.75)]
    assert d.eval()(x).equal(x)


def test_regulariser_matches_the_formula_and_pushes_towards_one_half():
    model = torch.nn.Sequential(
        ConcreteDropout(0.2), torch.nn.Conv2d(6, 4, 1), ConcreteDropout(0.7)
    )
    model.train()
    model(torch.randn(2, 6, 5, 5))
    assert concrete_regulariser(model, 10.0) is not None
    n = 50.0
    reg = concrete_regulariser(model, n)
    expected = 0.0
    for p, k in ((0.2, 6), (0.7, 4)):
        expected += 2 * k / n * (p * math.log(p) + (1 - p) * math.log(1 - p))
    assert reg.item() == pytest.approx(expected, rel=1e-5)
    reg.backward()
    first, last = concrete_layers(model)
    assert first.p_logit.grad < 0 < last.p_logit.grad  # gradient descent moves both to 0.5
    assert concrete_regulariser(torch.nn.Sequential(MCDropout(0.2)), n) is None


def _concrete_unet(seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(
        arch="unet", dropout="central", dropout_p=0.3, num_classes=5,
        decoder_channels=[32, 16, 16, 8, 8], concrete_dropout=True,
    )  # fmt: skip
    return build_model(cfg)


def test_model_option_spec_and_checkpoint_round_trip(tmp_path):
    model = _concrete_unet()
    layers = concrete_layers(model)
    assert len(layers) == 3 and model.spec["concrete_dropout"] is True
    for i, m in enumerate(layers):
        m.p = 0.1 + 0.1 * i
    ck.save_checkpoint(tmp_path, "best", model, meta=DatasetMeta(), config=Config())
    loaded, _ = ck.load_checkpoint(tmp_path)
    assert learned_rates(loaded) == pytest.approx(learned_rates(model), abs=1e-6)
    plain = dict(model.spec)
    del plain["concrete_dropout"]  # a spec written before the option existed
    assert not concrete_layers(model_from_spec(plain))
    with pytest.raises(ConfigError, match="concrete_dropout"):
        build_model(ModelConfig(dropout="none", concrete_dropout=True))


def test_sampler_fast_paths_use_the_learned_rates():
    model = _concrete_unet(1)
    for i, m in enumerate(concrete_layers(model)):
        m.p = (0.15, 0.4, 0.55)[i]
    model.eval()
    x = torch.randn(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    fast = MCSampler(model, samples=6, seed=2)(x)
    slow = naive_mc(model, x, samples=6, seed=2)
    for k in fast:
        torch.testing.assert_close(fast[k], slow[k], atol=2e-5, rtol=1e-5, msg=k)
    with torch.no_grad(), mc_dropout_mode(model):
        a, b = model(x)["logits"], model(x)["logits"]
    assert not torch.equal(a, b)  # sampling, not the relaxed training path (no gradients)


def test_training_learns_the_rates_and_logs_them(tmp_path):
    cfg = tiny_cfg("model.concrete_dropout=true", "data.synthetic_size=[32,32]")
    fit(cfg, tmp_path)
    model, _ = ck.load_checkpoint(tmp_path / "last.json")
    rates = learned_rates(model)
    assert len(rates) == 4 and all(abs(p - 0.3) > 1e-4 for p in rates.values())
    row = list(csv.DictReader(open(tmp_path / "log.csv")))[-1]
    assert float(row["train_concrete"]) < 0
    logged = {k[len("train_p_") :]: float(v) for k, v in row.items() if k.startswith("train_p_")}
    assert logged.keys() == rates.keys()


def test_rates_get_their_own_learning_rate():
    from seguncert.config import OptimConfig
    from seguncert.train.optim import build_optimizer

    model = _concrete_unet()
    rates = [m.p_logit for m in concrete_layers(model)]
    opt = build_optimizer(OptimConfig(lr=0.01, concrete_lr_scale=10.0), model.parameters(), rates)
    groups = {len(g["params"]): g for g in opt.param_groups}
    assert groups[3]["lr"] == pytest.approx(0.1) and groups[3]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
