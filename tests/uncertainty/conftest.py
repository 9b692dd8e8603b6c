"""Tiny staged models for the uncertainty tests (the real networks live in seguncert.models).

conv+BN stage (deterministic prefix) -> MCDropout + conv stage -> MCDropout + 1x1 head stage,
with a skip connection carried in the state so ``repeat_state`` handles lists too.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from seguncert.models.base import MCDropout, StagedModel


class _Stem(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)

    def forward(self, state: dict) -> dict:
        x = torch.relu(self.bn(self.conv(state["x"])))
        return {**state, "x": x, "skips": [x]}


class _DropConv(nn.Module):
    def __init__(self, width: int, p: float) -> None:
        super().__init__()
        self.drop = MCDropout(p)
        self.conv = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, state: dict) -> dict:
        x = torch.relu(self.conv(self.drop(state["x"]))) + state["skips"][0]
        return {**state, "x": x}


class _Head(nn.Module):
    def __init__(self, width: int, p: float, outputs: dict[str, int]) -> None:
        super().__init__()
        self.drop = MCDropout(p)
        self.outputs = outputs
        self.conv = nn.Conv2d(width, sum(outputs.values()), 1)

    def forward(self, state: dict) -> dict:
        y = self.conv(self.drop(state["x"]))
        out = dict(state)
        for name, part in zip(self.outputs, y.split(list(self.outputs.values()), 1)):
            out[name] = nn.functional.softplus(part) + 0.1 if name == "depth_loc" else part
        return out


class ToyStaged(StagedModel):
    def __init__(
        self,
        task: str = "segmentation",
        classes: int = 4,
        width: int = 8,
        p: float = 0.5,
        hetero: bool = False,
        depth_dist: str | None = "laplace",
    ) -> None:
        super().__init__()
        outputs: dict[str, int] = {}
        if task in ("segmentation", "joint"):
            outputs["logits"] = classes
            if hetero:
                outputs["logit_log_var"] = 1
        if task in ("depth", "joint"):
            outputs["depth_loc"] = 1
            if depth_dist in ("laplace", "gaussian"):
                outputs["depth_log_scale"] = 1
        self.stages = nn.ModuleList([_Stem(width), _DropConv(width, p), _Head(width, p, outputs)])
        self.spec = {"task": task, "depth_dist": depth_dist}


def _randomise_bn(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


@pytest.fixture
def make_model():
    def make(seed: int = 0, **kw) -> ToyStaged:
        torch.manual_seed(seed)
        model = ToyStaged(**kw)
        _randomise_bn(model, seed)
        return model.eval()

    return make


@pytest.fixture
def image():
    return torch.randn(2, 3, 6, 7, generator=torch.Generator().manual_seed(5))
