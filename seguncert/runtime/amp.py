"""Mixed-precision choices, resolved once from the config.

There is one AMP code path (as in nanoGPT): ``torch.autocast(device_type, amp_dtype,
enabled=amp_dtype is not None)`` around the forward pass and ``torch.amp.GradScaler(device_type,
enabled=amp_dtype == torch.float16)``; with AMP off both are no-ops.
"""

from __future__ import annotations

import torch

from seguncert.errors import ConfigError


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively: a CUDA GPU with bf16 support, or a CPU with
    AVX512-BF16 or AMX (elsewhere bf16 on the CPU is emulated and slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private: may go away
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def resolve_amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """``auto``: fp16 on CUDA, off on CPU; ``bf16`` on CPU or CUDA; ``fp16`` CUDA only;
    ``bf16_native``: bf16 where :func:`native_bf16` says the device has it, else off."""
    if mode == "off":
        return None
    if mode == "bf16_native":
        return torch.bfloat16 if native_bf16(device) else None
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
    raise ConfigError(
        f"config key 'train.amp' is {mode!r}; expected auto, off, fp16, bf16 or bf16_native"
    )


def autocast(device: torch.device, amp_dtype: torch.dtype | None):
    """The forward-pass context: autocast when ``amp_dtype`` is set, else disabled (no-op)."""
    return torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None)


def make_scaler(device: torch.device, amp_dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """Loss scaling is only needed for fp16 (bf16 has fp32's exponent range)."""
    return torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
