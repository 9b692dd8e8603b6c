"""The one place that turns a device name (``auto``, ``cpu``, ``cuda``, ``cuda:N``) into a
``torch.device``, for training, evaluation and inference alike."""

from __future__ import annotations

import torch

from ..errors import ConfigError


def resolve_device(name: str = "auto", local_rank: int = 0, what: str = "train.device"):
    """``auto`` -> ``cuda:<local_rank>`` when CUDA is available, else ``cpu``; ``cuda`` without
    an index -> ``cuda:<local_rank>`` (one GPU per torchrun process). ``what`` names the setting
    in the one-line error (a config key or a command-line flag)."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"{what} is {name!r}; expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{what} is {name} but CUDA is not available on this machine")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
        elif device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"{what} is {name} but this machine has {torch.cuda.device_count()} GPU(s)"
            )
    elif device.type != "cpu":
        raise ConfigError(f"{what} is {name!r}; expected auto, cpu, cuda or cuda:N")
    return device
