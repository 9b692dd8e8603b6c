"""The noise-integrated, calibrated predictive of one chunk of MC samples, and what a sampling
run accumulates (:class:`MCStats`): the per-sample half of :mod:`seguncert.uncertainty.sampler`.

Per chunk of k samples (logits (k, B, C, H, W)): p_t = softmax(cal(f_t)) without noise, or
p_t = (1/S) Σ_s softmax(cal(f_t + σ_t ε_s, base=f_t)) with S > 0 logit-noise draws (see the
sampler's docstring), folded into the streaming accumulators of
:mod:`seguncert.uncertainty.maps`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import ConfigError, SeguncertError
from .maps import RegressionAccumulator, SegmentationAccumulator, predictive_variance
from .masks import SeededNoise

Calibrator = Callable[..., torch.Tensor]  # cal(z (N, C, H, W), base=None) -> (N, C, H, W)


class MCStats:
    """What a sampling run accumulated (the temporal sampler fuses these across frames)."""

    def __init__(self) -> None:
        self.seg: SegmentationAccumulator | None = None
        self.reg: RegressionAccumulator | None = None
        self.samples: list[torch.Tensor] = []
        self.depth_samples: list[torch.Tensor] = []
        self.logits: list[torch.Tensor] = []
        self.logit_log_vars: list[torch.Tensor] = []


@dataclass
class SampleOptions:
    """How each forward's outputs become per-sample statistics (see the module docstring)."""

    calibrator: Calibrator | None = None  # None: identity
    noise_samples: int = 0
    noise: SeededNoise | None = None
    depth_dist: str | None = None
    keep_samples: bool = False
    keep_logits: bool = False


def _temperature_tensor(temperature) -> float | torch.Tensor:
    if isinstance(temperature, torch.Tensor) and temperature.numel() > 1:
        t = temperature.detach().float().flatten()
        if not bool((t > 0).all()):
            raise ConfigError("temperature: every per-class temperature must be > 0")
        return t
    t = float(temperature)
    if not t > 0:
        raise ConfigError(f"temperature must be > 0, got {t}")
    return t


def _divide(temperature: float | torch.Tensor, z: torch.Tensor, base=None) -> torch.Tensor:
    """The temperature calibrator: z (N, C, H, W) / τ, τ a number or per class (C,)."""
    if isinstance(temperature, torch.Tensor):
        if temperature.numel() != z.shape[1]:
            raise ConfigError(
                f"temperature has {temperature.numel()} entries but the model has "
                f"{z.shape[1]} classes"
            )
        return z / temperature.to(z.device).view(1, -1, 1, 1)
    return z / temperature


def make_calibrator(temperature=1.0, calibrator: Calibrator | None = None) -> Calibrator | None:
    """cal(z, base=None) from a callable or else a temperature; None where it is the identity."""
    t = _temperature_tensor(temperature)
    if calibrator is not None:
        if not callable(calibrator):
            raise ConfigError(
                f"calibrator must be a callable cal(z, base=None) -> z, got "
                f"{type(calibrator).__name__}"
            )
        if not (isinstance(t, float) and t == 1.0):
            raise ConfigError("give either a calibrator or a temperature, not both")
        return calibrator
    return None if isinstance(t, float) and t == 1.0 else functools.partial(_divide, t)


def _noise_count(noise_samples) -> int:
    if int(noise_samples) != noise_samples or int(noise_samples) < 0:
        raise ConfigError(f"mc.noise_samples must be an integer >= 0, got {noise_samples}")
    return int(noise_samples)


def segmentation_probs(
    z: torch.Tensor, log_var: torch.Tensor | None, opts: SampleOptions, ids: range
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Per-sample probabilities of a chunk: z (k, B, C, H, W) raw float32 logits of samples
    ``ids``, log_var (k, B, 1 or C, H, W) or None.

    Returns (p, log_p, noise_free_log_p), each (k, B, C, H, W) or None. Without noise (S = 0 or
    no log_var): p = softmax(cal(z)), log_p its log, None. With noise: the noise-integrated p_t,
    None, log_softmax(cal(z)) (for ``noise_aleatoric``). The S draws run one at a time over the
    chunk: temporaries stay a few (k, B, C, H, W), whatever S is.
    """
    cal, flat = opts.calibrator, z.flatten(0, 1)
    clean = flat if cal is None else cal(flat, base=flat)
    log_p0 = torch.log_softmax(clean.float(), 1).view_as(z)
    if opts.noise_samples == 0 or log_var is None:
        return log_p0.exp(), log_p0, None
    sigma = log_var.flatten(0, 1).mul(0.5).exp_()
    p, x = torch.zeros_like(flat), torch.empty_like(flat)
    for s in range(opts.noise_samples):
        opts.noise.draw(ids, s, tuple(z.shape[1:]), z.device, out=x).mul_(sigma).add_(flat)
        if cal is None:
            # softmax in place in the reused buffer: no fresh chunk-sized tensor per draw
            x.sub_(x.amax(1, keepdim=True)).exp_()
            p.addcdiv_(x, x.sum(1, keepdim=True))
        else:
            p.add_(torch.softmax(cal(x, base=flat).float(), 1))
    return p.div_(opts.noise_samples).view_as(z), None, log_p0


def _per_sample(t: torch.Tensor, k: int) -> torch.Tensor:
    """(k*B, ...) sample-major -> float32 (k, B, ...)."""
    return t.float().reshape(k, t.shape[0] // k, *t.shape[1:])


def _update_from_logits(stats: MCStats, z: torch.Tensor, lv, opts: SampleOptions) -> None:
    """Noise-free p_t = softmax(cal(f_t)), one sample at a time through
    :meth:`SegmentationAccumulator.update_logits`, which overwrites the calibrated logits: they
    are the forward's own output (or the calibrator's), so only kept logits need a copy."""
    flat = z.flatten(0, 1)
    clean = flat if opts.calibrator is None else opts.calibrator(flat, base=flat).float()
    if opts.keep_logits and clean.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr():
        clean = clean.clone()
    clean = clean.reshape(z.shape)
    kept = []
    for t in range(z.shape[0]):
        p = stats.seg.update_logits(clean[t], None if lv is None else lv[t])
        if opts.keep_samples:
            kept.append(p.clone())
    if kept:
        stats.samples.append(torch.stack(kept))


def consume_outputs(out: dict, k: int, stats: MCStats, opts: SampleOptions, ids: range) -> None:
    """Fold one forward's outputs (batch k*B, sample-major, samples ``ids``) into ``stats``."""
    if not isinstance(out, dict) or ("logits" not in out and "depth_loc" not in out):
        raise SeguncertError("model outputs have neither 'logits' nor 'depth_loc'")
    if "logits" in out:
        z = _per_sample(out["logits"], k)
        lv = out.get("logit_log_var")
        lv = _per_sample(lv, k) if lv is not None else None
        stats.seg = stats.seg or SegmentationAccumulator()
        if opts.keep_logits:
            stats.logits.append(z)
            if lv is not None:
                stats.logit_log_vars.append(lv)
        if opts.noise_samples and lv is not None:
            p, log_p, clean = segmentation_probs(z, lv, opts, ids)
            stats.seg.update(p, lv, log_probs=log_p, noise_free_log_probs=clean)
            if opts.keep_samples:
                stats.samples.append(p)
        else:
            _update_from_logits(stats, z, lv, opts)
    if "depth_loc" in out:
        loc = _per_sample(out["depth_loc"], k)
        var = None
        if "depth_log_scale" in out:
            if opts.depth_dist is None:
                raise ConfigError(
                    "model.spec has no 'depth_dist' to turn depth_log_scale into a variance"
                )
            var = predictive_variance(out["depth_log_scale"].float(), opts.depth_dist)
            var = var.reshape(loc.shape)
        stats.reg = stats.reg or RegressionAccumulator()
        stats.reg.update(loc, var)
        if opts.keep_samples:
            stats.depth_samples.append(loc[:, :, 0])


def finalize_stats(stats: MCStats, samples: int | None = None) -> dict[str, torch.Tensor]:
    """The output dict (see the module docstring) from accumulated stats. ``samples``: expand
    kept samples to this many (a model without active dropout is sampled once)."""
    out: dict[str, torch.Tensor] = {}
    if stats.seg is not None:
        out.update(stats.seg.finalize())
    if stats.reg is not None:
        r = stats.reg.finalize()
        if stats.seg is not None:
            out.update({("depth" if k == "depth" else f"depth_{k}"): v for k, v in r.items()})
        else:
            out.update(r)
            out["aleatoric"] = r["aleatoric_var"].sqrt()
            out["epistemic"] = r["epistemic_var"].sqrt()

    def cat(chunks):
        s = torch.cat(chunks)
        return s.expand(samples, *s.shape[1:]) if samples and s.shape[0] == 1 else s

    if stats.samples:
        out["samples"] = cat(stats.samples)
        if stats.depth_samples:
            out["depth_samples"] = cat(stats.depth_samples)
    elif stats.depth_samples:
        out["samples"] = cat(stats.depth_samples)
    if stats.logits:
        out["logits"] = cat(stats.logits)
        if stats.logit_log_vars:
            out["logit_log_var"] = cat(stats.logit_log_vars)
    return out
