"""Where the MC dropout goes: placement presets after Kendall et al. 2015 (Bayesian SegNet).

Each table maps a preset name to the places that get an :class:`MCDropout`. Places are named by
the tensor the dropout acts on, so a preset never puts two dropouts on the same tensor:

- SegNet ``encoder``: dropout on the output of encoder stage k (after its max-pool);
- SegNet ``decoder``: dropout on the output of decoder stage k (after its convs, before the next
  unpooling), as in the released Bayesian SegNet prototxt (``decdrop5`` feeds ``upsample4``);
  the output of decoder stage 1 *is* the classifier input, so decoder stage 1 and
  ``classifier`` name the same single dropout;
- U-Net ``bottleneck``: dropout on the deepest encoder features; ``decoder``: on the output of
  decoder block k (block 5's output is again the classifier input); ``classifier``: before the
  final 1x1 convolution(s).

Physically, a dropout on the output of stage k lives at the *start* of stage k+1, so stage k
itself stays in the deterministic prefix that MC sampling computes only once.
"""

from __future__ import annotations

from torch import nn

from ..errors import ConfigError
from .base import ConcreteDropout, MCDropout

# SegNet (VGG-16 encoder, 5 stages): encoder/decoder stage numbers, 1 = full resolution side.
SEGNET_PRESETS: dict[str, dict] = {
    "central": {"encoder": (3, 4, 5), "decoder": (5, 4, 3), "classifier": False},
    "encoder": {"encoder": (1, 2, 3, 4, 5), "decoder": (), "classifier": False},
    "decoder": {"encoder": (), "decoder": (5, 4, 3, 2, 1), "classifier": False},
    "classifier": {"encoder": (), "decoder": (), "classifier": True},
    "all": {"encoder": (1, 2, 3, 4, 5), "decoder": (5, 4, 3, 2, 1), "classifier": True},
    "none": {"encoder": (), "decoder": (), "classifier": False},
}

# SegNet-Basic (4 stages): the central preset covers the two innermost stages.
SEGNET_BASIC_PRESETS: dict[str, dict] = {
    "central": {"encoder": (3, 4), "decoder": (4, 3), "classifier": False},
    "encoder": {"encoder": (1, 2, 3, 4), "decoder": (), "classifier": False},
    "decoder": {"encoder": (), "decoder": (4, 3, 2, 1), "classifier": False},
    "classifier": {"encoder": (), "decoder": (), "classifier": True},
    "all": {"encoder": (1, 2, 3, 4), "decoder": (4, 3, 2, 1), "classifier": True},
    "none": {"encoder": (), "decoder": (), "classifier": False},
}

# U-Net: decoder blocks numbered 1 (deepest, right after the bottleneck) to 5 (full size).
UNET_PRESETS: dict[str, dict] = {
    "central": {"bottleneck": True, "decoder": (1, 2), "classifier": False},
    "encoder": {"bottleneck": True, "decoder": (), "classifier": False},
    "decoder": {"bottleneck": False, "decoder": (1, 2, 3, 4, 5), "classifier": False},
    "classifier": {"bottleneck": False, "decoder": (), "classifier": True},
    "all": {"bottleneck": True, "decoder": (1, 2, 3, 4, 5), "classifier": True},
    "none": {"bottleneck": False, "decoder": (), "classifier": False},
}

PRESETS_BY_ARCH: dict[str, dict[str, dict]] = {
    "segnet": SEGNET_PRESETS,
    "segnet_basic": SEGNET_BASIC_PRESETS,
    "unet": UNET_PRESETS,
}


def get_preset(arch: str, name: str) -> dict:
    table = PRESETS_BY_ARCH[arch]
    if name not in table:
        raise ConfigError(
            f"config key 'model.dropout' is {name!r}; expected one of {', '.join(table)}"
        )
    return table[name]


def make_dropout(active: bool, p: float, concrete: bool = False) -> nn.Module:
    """An MCDropout where the preset asks for one (and p > 0), else Identity; with ``concrete``
    a :class:`ConcreteDropout` that starts at rate p and learns it.

    MCDropout and Identity hold no parameters, so their state_dict keys are the same for every
    preset: a checkpoint trained with one placement loads into a model built with another. A
    Concrete layer adds its ``p_logit``, so a Concrete checkpoint keeps its own placement.
    """
    if not 0.0 <= p < 1.0:
        raise ConfigError(f"config key 'model.dropout_p' must be in [0, 1), got {p!r}")
    if not (active and p > 0):
        return nn.Identity()
    return ConcreteDropout(p) if concrete else MCDropout(p)
