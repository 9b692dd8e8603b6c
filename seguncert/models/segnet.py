"""Bayesian SegNet (Badrinarayanan et al. 2017; Kendall et al. 2015) as a staged model.

Stages: encoder 1..N (conv blocks + 2x2 max-pool keeping the argmax indices), decoder N..1
(max-unpool with the encoder's indices + conv blocks), head. The state carries the indices and
pre-pool sizes as stacks; each decoder stage pops its own, so a replicated suffix state holds
only what the suffix still needs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, SeguncertError
from .base import StagedModel, State, model_spec
from .dropout import get_preset, make_dropout
from .heads import HeadStage

# VGG-16-BN: conv channels per encoder stage (2, 2, 3, 3, 3 convs).
VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
# Index of each encoder stage's first layer in torchvision's vgg16_bn().features
# (conv, bn, relu per conv; a max-pool closes each stage).
VGG16_FEATURE_OFFSETS = (0, 7, 14, 24, 34)


def conv_bn(cin: int, cout: int, kernel: int, relu: bool = True) -> list[nn.Module]:
    layers = [nn.Conv2d(cin, cout, kernel, padding=kernel // 2), nn.BatchNorm2d(cout)]
    return layers + [nn.ReLU(inplace=True)] if relu else layers


class EncoderStage(nn.Module):
    """Optional dropout on the incoming map (the previous encoder stage's pooled output) ->
    convs -> 2x2 max-pool, pushing the argmax indices and the pre-pool size on the state."""

    def __init__(self, convs: nn.Sequential, dropout: nn.Module):
        super().__init__()
        self.drop = dropout
        self.convs = convs

    def forward(self, state: State) -> State:
        x = self.convs(self.drop(state["x"]))
        size = tuple(x.shape[-2:])
        x, idx = F.max_pool2d(x, kernel_size=2, stride=2, return_indices=True)
        return {
            **state,
            "x": x,
            "indices": [*state.get("indices", []), idx],
            "sizes": [*state.get("sizes", []), size],
        }


class DecoderStage(nn.Module):
    """Optional dropout on the incoming map (the previous stage's output) -> max-unpool with
    the matching encoder indices (output_size given, so odd sizes unpool exactly) -> convs."""

    def __init__(self, convs: nn.Sequential, dropout: nn.Module):
        super().__init__()
        self.drop = dropout
        self.convs = convs

    def forward(self, state: State) -> State:
        *indices, idx = state["indices"]
        *sizes, size = state["sizes"]
        x = F.max_unpool2d(self.drop(state["x"]), idx, kernel_size=2, stride=2, output_size=size)
        return {**state, "x": self.convs(x), "indices": indices, "sizes": sizes}


def _drop(p: float, concrete: bool) -> Callable[[bool], nn.Module]:
    """The dropout layer factory of a preset place: ``drop(active)``."""
    return functools.partial(make_dropout, p=p, concrete=concrete)


class _SegNetBase(StagedModel):
    """Assembles encoder/decoder/head stages from conv blocks and a dropout preset."""

    def _assemble(
        self,
        enc_blocks: list[nn.Sequential],
        dec_blocks: list[nn.Sequential],
        head_channels: int,
        preset: dict,
        drop: Callable[[bool], nn.Module],
        task: str,
        num_classes: int,
        heteroscedastic: bool,
        depth_dist: str,
    ) -> None:
        n = len(enc_blocks)
        # A dropout on a stage's output sits at the start of the next stage, so the stage
        # itself stays in the deterministic prefix. enc_blocks[k] (encoder stage k + 1) takes
        # the dropout on the output of encoder stage k; enc_blocks[0] sees the image (none).
        enc = [
            EncoderStage(block, drop(k > 0 and k in preset["encoder"]))
            for k, block in enumerate(enc_blocks)
        ]
        # dec_blocks[j] is decoder stage n - j. Its input is the output of decoder stage
        # n - j + 1 for j > 0, and the output of the deepest encoder stage n for j = 0.
        dec = [
            DecoderStage(
                block,
                drop(n in preset["encoder"] if j == 0 else n - j + 1 in preset["decoder"]),
            )
            for j, block in enumerate(dec_blocks)
        ]
        head_drop = drop(preset["classifier"] or 1 in preset["decoder"])
        head = HeadStage(head_channels, task, num_classes, heteroscedastic, depth_dist, head_drop)
        self.stages = nn.ModuleList([*enc, *dec, head])


class SegNetBasic(_SegNetBase):
    """SegNet-Basic: 4 x (7x7 conv, BN, ReLU, pool) / 4 x (unpool, 7x7 conv, BN) + 1x1 classifier.

    As in the paper, the decoder convolutions have no ReLU. Inputs: any size (divisible by 16 for
    exact pooling; unpooling uses the recorded sizes, so other sizes work too).
    """

    def __init__(
        self,
        task: str = "segmentation",
        num_classes: int = 11,
        dropout: str = "central",
        dropout_p: float = 0.5,
        heteroscedastic: bool = True,
        width: int = 64,
        depth_dist: str = "laplace",
        in_channels: int = 3,
        concrete_dropout: bool = False,
    ):
        super().__init__()
        if width < 1:
            raise ConfigError(f"config key 'model.width' must be positive, got {width!r}")
        preset = get_preset("segnet_basic", dropout)
        enc = [
            nn.Sequential(*conv_bn(in_channels if k == 0 else width, width, 7)) for k in range(4)
        ]
        dec = [nn.Sequential(*conv_bn(width, width, 7, relu=False)) for _ in range(4)]
        drop = _drop(dropout_p, concrete_dropout)
        self._assemble(
            enc, dec, width, preset, drop, task, num_classes, heteroscedastic, depth_dist
        )
        self.spec = model_spec(
            "segnet_basic",
            task=task,
            num_classes=num_classes,
            dropout=dropout,
            dropout_p=dropout_p,
            heteroscedastic=heteroscedastic,
            width=width,
            depth_dist=depth_dist,
            concrete_dropout=concrete_dropout,
        )


class SegNetVGG(_SegNetBase):
    """SegNet: VGG-16-BN encoder (5 stages of 2, 2, 3, 3, 3 convs), mirrored decoder, 1x1 head.

    ``encoder_weights="imagenet"`` copies torchvision's ImageNet ``vgg16_bn`` convolution and
    BatchNorm weights into the encoder (needs the download to succeed).
    """

    def __init__(
        self,
        task: str = "segmentation",
        num_classes: int = 11,
        dropout: str = "central",
        dropout_p: float = 0.5,
        heteroscedastic: bool = True,
        depth_dist: str = "laplace",
        encoder_weights: str | None = None,
        in_channels: int = 3,
        concrete_dropout: bool = False,
    ):
        super().__init__()
        if encoder_weights not in (None, "imagenet"):
            raise ConfigError(
                f"config key 'model.encoder_weights' is {encoder_weights!r} for arch segnet; "
                "expected null or imagenet"
            )
        preset = get_preset("segnet", dropout)
        enc, cin = [], in_channels
        for chans in VGG16_STAGES:
            layers = []
            for c in chans:
                layers += conv_bn(cin, c, 3)
                cin = c
            enc.append(nn.Sequential(*layers))
        # Mirror: decoder stage k maps stage k's width back to stage k-1's (64 at stage 1).
        dec = []
        for k in range(len(VGG16_STAGES) - 1, -1, -1):
            chans = VGG16_STAGES[k]
            out = VGG16_STAGES[k - 1][-1] if k > 0 else chans[-1]
            widths = [*chans[:-1], out]
            layers, cin = [], chans[-1]
            for c in widths:
                layers += conv_bn(cin, c, 3)
                cin = c
            dec.append(nn.Sequential(*layers))
        drop = _drop(dropout_p, concrete_dropout)
        self._assemble(enc, dec, 64, preset, drop, task, num_classes, heteroscedastic, depth_dist)
        self.spec = model_spec(
            "segnet",
            task=task,
            num_classes=num_classes,
            dropout=dropout,
            dropout_p=dropout_p,
            heteroscedastic=heteroscedastic,
            depth_dist=depth_dist,
            concrete_dropout=concrete_dropout,
        )
        if encoder_weights == "imagenet":
            self.load_vgg16_bn_imagenet()

    def load_vgg16_bn_imagenet(self) -> None:
        """Copy torchvision's ImageNet vgg16_bn ``features`` into the encoder stages."""
        from torchvision.models import VGG16_BN_Weights

        try:
            state = VGG16_BN_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
        except Exception as e:  # network/cache problems: tell the user what to change
            raise SeguncertError(
                f"could not fetch ImageNet vgg16_bn weights ({type(e).__name__}: {e}); "
                "set model.encoder_weights=null to train from scratch"
            ) from None
        own = {}
        for k, offset in enumerate(VGG16_FEATURE_OFFSETS):
            for key in self.stages[k].convs.state_dict():
                layer, attr = key.split(".", 1)
                own[f"stages.{k}.convs.{key}"] = state[f"features.{offset + int(layer)}.{attr}"]
        missing = set(own) - set(self.state_dict())
        assert not missing, f"vgg16_bn key mapping out of date: {sorted(missing)[:3]}"
        self.load_state_dict(own, strict=False)
