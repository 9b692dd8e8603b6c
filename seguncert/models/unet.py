"""Bayesian U-Net on any segmentation-models-pytorch encoder, as a staged model.

Stages: [encoder, bottleneck dropout, decoder block 1..5, head]. The encoder stage puts the
skip features (strides 2..16) on the state and each decoder block pops the one it concatenates,
so a replicated suffix state carries only the skips still to come. Decoder blocks are our own
(upsample x2, concat skip, 2 x conv-BN-ReLU) so that each is a stage the dropout can split at.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, SeguncertError
from .base import StagedModel, State, model_spec
from .decoder_ops import channels_last_pays, fold_bn, phase_weights, up2_conv3x3, up2_fits
from .dropout import get_preset, make_dropout
from .heads import HeadStage


def build_smp_encoder(name: str, weights: str | None, in_channels: int = 3) -> nn.Module:
    """smp encoder of depth 5, with a one-line error for an unknown name or weights."""
    import segmentation_models_pytorch as smp

    known = smp.encoders.encoders
    if name not in known and not name.startswith("tu-"):
        examples = "resnet18, resnet34, resnet50, mobilenet_v2, efficientnet-b0, tu-<timm name>"
        raise ConfigError(
            f"config key 'model.encoder' is {name!r}: not a segmentation-models-pytorch "
            f"encoder (e.g. {examples}; {len(known)} names in smp.encoders.encoders)"
        )
    if weights is not None and name in known:
        settings = known[name]["pretrained_settings"]
        if weights not in settings:
            raise ConfigError(
                f"config key 'model.encoder_weights' is {weights!r}; encoder {name} offers "
                f"{', '.join(settings) or 'none'} (or null)"
            )
    try:
        return smp.encoders.get_encoder(name, in_channels=in_channels, depth=5, weights=weights)
    except (KeyError, ValueError) as e:  # e.g. an unknown timm model behind "tu-"
        raise ConfigError(f"config key 'model.encoder' is {name!r}: {e}") from None
    except Exception as e:  # weight download failed (offline, proxy, cache)
        if weights is None:
            raise
        raise SeguncertError(
            f"could not fetch {weights} weights for encoder {name} ({type(e).__name__}: {e}); "
            "set model.encoder_weights=null to train from scratch"
        ) from None


class EncoderStage(nn.Module):
    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, state: State) -> State:
        feats = self.encoder(state["x"])
        # feats[0] is the input itself; feats[1:5] (strides 2..16) are the skips.
        return {**state, "x": feats[-1], "skips": list(feats[1:-1])}


class DropoutStage(nn.Module):
    """Dropout on the deepest encoder features (Identity when the preset has none)."""

    def __init__(self, dropout: nn.Module):
        super().__init__()
        self.drop = dropout

    def forward(self, state: State) -> State:
        return {**state, "x": self.drop(state["x"])}


class DecoderBlock(nn.Module):
    """Optional dropout on the incoming map (previous block's output) -> nearest upsample to the
    skip's size -> concat skip -> 2 x (3x3 conv, BN, ReLU).

    On a state prepared for MC sampling (``"skip_terms"`` present, see
    :meth:`BayesianUNet.prepare_suffix`) the same numbers come from cheaper arithmetic: the
    first convolution is linear, conv(cat(up(x), skip)) = conv_x(up(x)) + conv_skip(skip), and
    the skip half, the same for every sample, arrives precomputed at batch B and is broadcast
    over the k*B samples instead of being replicated, concatenated and convolved per sample;
    eval-mode BatchNorm is folded into the convolutions, and an exact x2 upsampling followed by
    the 3x3 convolution runs at the low resolution (:mod:`~seguncert.models.decoder_ops`).
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, dropout: nn.Module):
        super().__init__()
        self.drop = dropout
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels + skip_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
        self.has_skip = skip_channels > 0
        self.in_channels = in_channels
        self._derived: tuple | None = None  # (key, weights) of _folded_weights

    def forward(self, state: State) -> State:
        x = self.drop(state["x"])
        if "skip_terms" in state:
            return self._forward_prepared(x, state)
        skips = state["skips"]
        if self.has_skip:
            *skips, skip = skips
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = torch.cat([x, skip], dim=1)
        else:
            # Last block: back to the input size (x2 for sizes divisible by 32).
            x = F.interpolate(x, size=tuple(state["input_size"]), mode="nearest")
        return {**state, "x": self.convs(x), "skips": skips}

    def skip_term(self, skip: torch.Tensor) -> torch.Tensor:
        """The skip's share of the first convolution (B, out, h, w), with the first BN's scale
        and shift when it can be folded (see :meth:`_foldable`)."""
        conv, bn = self.convs[0], self.convs[1]
        weight = conv.weight[:, self.in_channels :]
        if self._foldable():
            weight, shift = fold_bn(weight, bn)
            return conv._conv_forward(skip, weight, None).add_(shift.view(1, -1, 1, 1))
        return conv._conv_forward(skip, weight, None)

    def _foldable(self) -> bool:
        bns = (self.convs[1], self.convs[4])
        return all(not bn.training and bn.running_var is not None for bn in bns)

    def _folded_weights(self) -> tuple:
        """(w1 of the upsampled input with BN 1 folded, its shift, its x2 phase weights,
        conv 2 with BN 2 folded, its shift), derived once and kept while the parameters and
        BN statistics stay the same tensors at the same version (an optimiser step, a
        ``load_state_dict`` or ``.to()`` changes one of them): the sampler runs this block
        once per MC sample, and re-deriving them each time was a visible share of a
        tools/infer.py profile (docs/benchmarks.md, the video front)."""
        conv1, bn1, _, conv2, bn2, _ = self.convs
        tensors = [conv1.weight, conv2.weight]
        tensors += [t for bn in (bn1, bn2) for t in (bn.weight, bn.bias, bn.running_mean,
                                                     bn.running_var) if t is not None]  # fmt: skip
        try:
            key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)
        except RuntimeError:  # inference tensors keep no version: derive every time
            key = None
        if key is None or self._derived is None or self._derived[0] != key:
            with torch.no_grad():
                w1, shift1 = fold_bn(conv1.weight[:, : self.in_channels], bn1)
                w2, shift2 = fold_bn(conv2.weight, bn2)
                weights = (w1, shift1, phase_weights(w1), w2, shift2)
            self._derived = None if key is None else (key, weights)
            return weights
        return self._derived[1]

    def _forward_prepared(self, x: torch.Tensor, state: State) -> State:
        conv1, bn1, _, conv2, bn2, _ = self.convs
        terms = list(state["skip_terms"])
        term = terms.pop() if self.has_skip else None
        size = tuple(term.shape[-2:] if term is not None else state["input_size"])
        fold = self._foldable()
        w1, shift1, phases = conv1.weight[:, : self.in_channels], None, None
        if fold:
            w1, shift1, phases, w2, shift2 = self._folded_weights()
        bias1 = shift1 if term is None else None  # with a skip, the shift is in the term
        cl = channels_last_pays(x, conv1.out_channels)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        if up2_fits(x, size) and conv1.padding == (1, 1):
            y = up2_conv3x3(x, w1, bias1, size, phases)
        else:
            y = conv1._conv_forward(F.interpolate(x, size=size, mode="nearest"), w1, bias1)
        if term is not None:
            b = term.shape[0]
            y.view(y.shape[0] // b, b, *y.shape[1:]).add_(term)  # broadcast over the samples
        y = y.relu_() if fold else F.relu(bn1(y), inplace=True)
        if fold:
            y = conv2._conv_forward(y, w2, shift2).relu_()
        else:
            y = F.relu(bn2(conv2(y)), inplace=True)
        return {**state, "x": y.contiguous() if cl else y, "skip_terms": terms}


class BayesianUNet(StagedModel):
    def __init__(
        self,
        task: str = "segmentation",
        encoder: str = "resnet18",
        encoder_weights: str | None = None,
        num_classes: int = 11,
        dropout: str = "decoder",
        dropout_p: float = 0.5,
        heteroscedastic: bool = True,
        decoder_channels: list[int] | tuple[int, ...] = (256, 128, 64, 32, 16),
        depth_dist: str = "laplace",
        in_channels: int = 3,
        concrete_dropout: bool = False,
    ):
        super().__init__()
        decoder_channels = list(decoder_channels)
        if len(decoder_channels) != 5 or min(decoder_channels) < 1:
            raise ConfigError(
                "config key 'model.decoder_channels' must list 5 positive widths (one per "
                f"decoder block), got {decoder_channels!r}"
            )
        preset = get_preset("unet", dropout)
        drop = functools.partial(make_dropout, p=dropout_p, concrete=concrete_dropout)
        enc = build_smp_encoder(encoder, encoder_weights, in_channels)
        enc_ch = list(enc.out_channels)  # 6 entries: input, strides 2, 4, 8, 16, 32
        # Skip of block k (1..4) is feats[5 - k]; block 5 has none (feats[0] is the image).
        skip_ch = [enc_ch[4], enc_ch[3], enc_ch[2], enc_ch[1], 0]
        in_ch = [enc_ch[5], *decoder_channels[:-1]]
        blocks = [
            DecoderBlock(
                in_ch[i],
                skip_ch[i],
                decoder_channels[i],
                # dropout on block i's input = the output of block i (1-based) for i > 0
                drop(i > 0 and i in preset["decoder"]),
            )
            for i in range(5)
        ]
        head_drop = drop(preset["classifier"] or 5 in preset["decoder"])
        head = HeadStage(
            decoder_channels[-1], task, num_classes, heteroscedastic, depth_dist, head_drop
        )
        self.stages = nn.ModuleList(
            [
                EncoderStage(enc),
                DropoutStage(drop(preset["bottleneck"])),
                *blocks,
                head,
            ]
        )
        self.spec = model_spec(
            "unet",
            task=task,
            encoder=encoder,
            num_classes=num_classes,
            dropout=dropout,
            dropout_p=dropout_p,
            heteroscedastic=heteroscedastic,
            decoder_channels=decoder_channels,
            depth_dist=depth_dist,
            concrete_dropout=concrete_dropout,
        )

    def prepare_suffix(self, state: State) -> State:
        """Precompute, once per image, each suffix decoder block's skip half of its first
        convolution (see :class:`DecoderBlock`) and hand them over as ``"skip_terms"`` at
        batch B (listed in ``"shared"``: :func:`~seguncert.models.base.repeat_state` does not
        replicate them) in place of the skips themselves. Inference only (folds eval BN)."""
        blocks = [s for s in self.stages[self.split_index :] if isinstance(s, DecoderBlock)]
        if not blocks:
            return state
        skips = list(state.get("skips", ()))
        terms = []
        for block in blocks:
            if block.has_skip:
                terms.append(block.skip_term(skips.pop()))
        # blocks pop from the end, like the skips they replace
        return {**state, "skips": skips, "skip_terms": terms[::-1], "shared": ("skip_terms",)}
