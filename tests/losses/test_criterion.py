"""build_criterion: loss choice per task, class weights, depth masks, learned task weights."""

from __future__ import annotations

import pytest
import torch

from seguncert.config import Config
from seguncert.data.common import DatasetMeta
from seguncert.errors import ConfigError
from seguncert.losses import (
    build_criterion,
    cross_entropy,
    heteroscedastic_cross_entropy,
    l1_loss,
    laplace_nll,
)

C = 3


def config(task: str = "segmentation", **loss) -> Config:
    cfg = Config()
    cfg.model.task = task
    cfg.model.num_classes = C
    for k, v in loss.items():
        setattr(cfg.loss, k, v)
    return cfg


def meta(weights=(0.5, 1.0, 2.0)) -> DatasetMeta:
    return DatasetMeta(
        class_names=["a", "b", "c"], class_weights=list(weights) if weights else None
    )


def batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, C, (2, 4, 4), generator=g)
    label[0, 0] = 255
    depth = torch.rand(2, 4, 4, generator=g) * 5 + 0.5
    depth[1, :2] = 0.0  # no depth here, but labelled
    return {"label": label, "depth": depth, "valid": label != 255, "depth_valid": depth > 0}


def outputs(seed: int = 1, hetero: bool = True, depth: bool = False) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {"logits": torch.randn(2, C, 4, 4, generator=g, requires_grad=True)}
    if hetero:
        out["logit_log_var"] = torch.randn(2, 1, 4, 4, generator=g, requires_grad=True)
    if depth:
        out["depth_loc"] = torch.rand(2, 1, 4, 4, generator=g) + 1.0
        out["depth_log_scale"] = torch.randn(2, 1, 4, 4, generator=g) * 0.3
    return out


def test_segmentation_ce_and_hetero_ce_with_class_weights():
    b, w = batch(), torch.tensor([0.5, 1.0, 2.0])
    crit = build_criterion(config(), meta())
    out = outputs(hetero=False)
    loss, parts = crit(out, b)
    torch.testing.assert_close(loss, cross_entropy(out["logits"], b["label"], w))
    assert parts == {
        "seg": pytest.approx(float(loss.detach())),
        "loss": pytest.approx(float(loss.detach())),
    }
    out = outputs(hetero=True)
    torch.manual_seed(7)
    loss, _ = build_criterion(config(aleatoric_samples=6), meta())(out, b)
    torch.manual_seed(7)
    want = heteroscedastic_cross_entropy(out["logits"], out["logit_log_var"], b["label"], 6, w)
    torch.testing.assert_close(loss, want)
    unweighted, _ = build_criterion(config(class_weights="none"), meta(None))(
        outputs(hetero=False), b
    )
    torch.testing.assert_close(
        unweighted, cross_entropy(outputs(hetero=False)["logits"], b["label"])
    )


def test_depth_uses_the_datasets_depth_valid_and_l1():
    b = batch()
    b["depth_valid"] = b["depth"] > 1.0
    out = outputs(hetero=False, depth=True)
    loss, parts = build_criterion(config("depth"), meta(None))(out, b)
    want = laplace_nll(out["depth_loc"], out["depth_log_scale"], b["depth"], b["depth_valid"])
    torch.testing.assert_close(loss, want)
    assert set(parts) == {"depth", "loss"}
    loss, _ = build_criterion(config("depth", depth="l1"), meta(None))(out, b)
    torch.testing.assert_close(loss, l1_loss(out["depth_loc"], b["depth"], b["depth_valid"]))
    del out["depth_log_scale"]
    with pytest.raises(ConfigError, match="depth scale"):
        build_criterion(config("depth", depth="gaussian"), meta(None))(out, b)


def test_joint_masks_and_learned_weighting():
    b, out = batch(), outputs(hetero=False, depth=True)
    crit = build_criterion(config("joint", multitask="learned"), meta())
    # The depth NLL is a likelihood with its own learned scale: only the CE gets an s_k.
    assert [p.shape for p in crit.parameters()] == [torch.Size([1])]
    loss, parts = crit(out, b)
    # the dataset's depth_valid, not the label mask: labelled pixels without depth drop out
    seg = cross_entropy(out["logits"], b["label"], torch.tensor([0.5, 1.0, 2.0]))
    dep = laplace_nll(out["depth_loc"], out["depth_log_scale"], b["depth"], b["depth_valid"])
    torch.testing.assert_close(loss, seg + dep)  # s_seg = 0 at start
    assert parts["seg"] == pytest.approx(float(seg.detach())) and parts["depth"] == pytest.approx(
        float(dep.detach())
    )
    assert parts["log_var_seg"] == 0.0 and "log_var_depth" not in parts
    l1 = build_criterion(config("joint", multitask="learned", depth="l1"), meta())
    assert [p.shape for p in l1.parameters()] == [torch.Size([2])]
    loss.backward()
    assert crit.weighting.log_vars.grad is not None
    fixed = build_criterion(config("joint", multitask="fixed"), meta())
    assert list(fixed.parameters()) == []
    torch.testing.assert_close(fixed(out, b)[0], seg + dep)


def test_criterion_errors():
    with pytest.raises(ConfigError, match="class_weights=none"):
        build_criterion(config(), meta(None))
    with pytest.raises(ConfigError, match="num_classes"):
        build_criterion(config(), meta((1.0, 2.0)))
    crit = build_criterion(config(class_weights="none"), meta(None))
    b = batch()
    b["label"] = b["label"][:, :2]
    with pytest.raises(ValueError, match="output size"):
        crit(outputs(), b)
