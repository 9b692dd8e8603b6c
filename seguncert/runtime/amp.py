"""Mixed-precision choices, resolved once from the config.

There is one AMP code path (as in nanoGPT): ``torch.autocast(device_type, amp_dtype,
enabled=amp_dtype is not None)`` around the forward pass and ``torch.amp.GradScaler(device_type,
enabled=amp_dtype == torch.float16)``; with AMP off both are no-ops.
"""

from __future__ import annotations

import torch

from seguncert.errors import ConfigError


def resolve_amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """``auto``: fp16 on CUDA, off on CPU; ``bf16`` on CPU or CUDA; ``fp16`` CUDA only."""
    if mode == "off":
        return None
    if mode == "auto":
        return torch.float16 if device.type == "cuda" else None
    if mode == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError(
                "train.amp=bf16 but this GPU has no bf16 support (use train.amp=fp16)"
            )
        return torch.bfloat16
    if mode == "fp16":
        if device.type != "cuda":
            raise ConfigError(
                "train.amp=fp16 needs a CUDA device (use train.amp=bf16 or off on CPU)"
            )
        return torch.float16
    raise ConfigError(f"config key 'train.amp' is {mode!r}; expected auto, off, fp16 or bf16")


def autocast(device: torch.device, amp_dtype: torch.dtype | None):
    """The forward-pass context: autocast when ``amp_dtype`` is set, else disabled (no-op)."""
    return torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None)


def make_scaler(device: torch.device, amp_dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """Loss scaling is only needed for fp16 (bf16 has fp32's exponent range)."""
    return torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
