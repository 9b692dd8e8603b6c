"""Monte-Carlo dropout sampling with a shared deterministic prefix and bounded memory.

``MCSampler(model, samples=T)(x)`` runs ``model.forward_prefix(x)`` once, then the stochastic
suffix on the prefix state replicated k samples at a time (k chosen from a memory budget), and
streams each chunk into the accumulators of :mod:`seguncert.uncertainty.maps`; it never holds
T x C x H x W unless ``return_samples=True``.

Reproducibility. Every active :class:`MCDropout` draws its mask *per MC sample* from a generator
seeded by (seed, sample index t, layer index, call index) -- see :class:`SeededDropout` -- instead
of from the global RNG. So the masks of sample t do not depend on how samples are chunked: the
result is the same for every chunk size k and memory budget (up to float rounding of batched vs
unbatched kernels, ~1e-6), and ``naive_mc(..., seed=s)`` (T separate full passes) draws exactly the
same masks as ``MCSampler(seed=s)``. Masks do depend on the batch size B (one draw covers the whole
replicated batch of a sample). The caller's global RNG state is left untouched. Masks follow
``nn.Dropout``: keep with probability 1-p, scale kept units by 1/(1-p).

Output keys (all float32 on the model's device, (B, H, W) unless stated):
- segmentation (``logits``): ``probs`` (B, C, H, W), ``pred`` long, ``entropy`` (total),
  ``aleatoric`` (expected entropy), ``epistemic`` (mutual information), ``prob_var``, and
  ``logit_var`` (mean learned logit variance of the predicted class) for heteroscedastic heads.
- depth-only (``depth_loc``): ``depth``, ``aleatoric_var``, ``epistemic_var``, ``total_var`` and,
  for the overlay tools, ``aleatoric`` / ``epistemic`` = the standard deviations (sqrt of the vars).
- joint: the segmentation keys unchanged plus ``depth``, ``depth_aleatoric_var``,
  ``depth_epistemic_var``, ``depth_total_var``.
- ``return_samples=True``: ``samples`` = per-sample tempered probabilities (T, B, C, H, W) for
  segmentation / joint models, per-sample depth means (T, B, H, W) for depth-only models; joint
  models also get ``depth_samples`` (T, B, H, W).
Temperature divides the logits before the softmax; it does not touch ``logit_var`` or depth.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..errors import ConfigError, SeguncertError
from ..models.base import has_active_dropout, mc_dropout_mode, repeat_state
from .maps import RegressionAccumulator, SegmentationAccumulator, predictive_variance
from .masks import ActivationCounter, SeededDropout, flat_tensors, tensor_bytes


class MCStats:
    """What a sampling run accumulated (the temporal sampler fuses these across frames)."""

    def __init__(self) -> None:
        self.seg: SegmentationAccumulator | None = None
        self.reg: RegressionAccumulator | None = None
        self.samples: list[torch.Tensor] = []
        self.depth_samples: list[torch.Tensor] = []


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


def consume_outputs(
    out: dict, k: int, stats: MCStats, temperature, depth_dist: str | None, keep_samples: bool
) -> None:
    """Fold one forward's outputs (batch k*B, sample-major) into ``stats``."""
    if not isinstance(out, dict) or ("logits" not in out and "depth_loc" not in out):
        raise SeguncertError("model outputs have neither 'logits' nor 'depth_loc'")
    if "logits" in out:
        z = out["logits"].float()
        z = z.reshape(k, z.shape[0] // k, *z.shape[1:])
        if isinstance(temperature, torch.Tensor):
            if temperature.numel() != z.shape[2]:
                raise ConfigError(
                    f"temperature has {temperature.numel()} entries but the model has "
                    f"{z.shape[2]} classes"
                )
            z = z / temperature.to(z.device).view(1, 1, -1, 1, 1)
        elif temperature != 1.0:
            z = z / temperature
        log_p = torch.log_softmax(z, 2)
        p = log_p.exp()
        lv = out.get("logit_log_var")
        if lv is not None:
            lv = lv.float().reshape(k, lv.shape[0] // k, *lv.shape[1:])
        stats.seg = stats.seg or SegmentationAccumulator()
        stats.seg.update(p, lv, log_probs=log_p)
        if keep_samples:
            stats.samples.append(p)
    if "depth_loc" in out:
        loc = out["depth_loc"].float()
        loc = loc.reshape(k, loc.shape[0] // k, *loc.shape[1:])
        var = None
        if "depth_log_scale" in out:
            if depth_dist is None:
                raise ConfigError(
                    "model.spec has no 'depth_dist' to turn depth_log_scale into a variance"
                )
            var = predictive_variance(out["depth_log_scale"].float(), depth_dist)
            var = var.reshape(loc.shape)
        stats.reg = stats.reg or RegressionAccumulator()
        stats.reg.update(loc, var)
        if keep_samples:
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
    return out


def _model_device(model: nn.Module, x: torch.Tensor) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else x.device


def _autocast(device: torch.device, amp_dtype):
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def _depth_dist(model: nn.Module, depth_dist: str | None) -> str | None:
    spec = getattr(model, "spec", None)
    dist = depth_dist or (spec.get("depth_dist") if isinstance(spec, dict) else None)
    if dist is not None and dist not in ("gaussian", "laplace", "l1"):
        raise ConfigError(f"depth_dist must be gaussian, laplace or l1, got {dist!r}")
    return dist


def naive_mc(
    model: nn.Module,
    x: torch.Tensor,
    samples: int = 20,
    seed: int | None = None,
    temperature=1.0,
    depth_dist: str | None = None,
    return_samples: bool = False,
) -> dict[str, torch.Tensor]:
    """The textbook estimator: ``samples`` full forward passes of x (B, 3, H, W), one at a time,
    dropout on and BatchNorm in eval; same output dict as :class:`MCSampler`.

    ``seed=None`` uses torch's own dropout and global RNG (the benchmark baseline). An int seed
    draws the masks of :class:`SeededDropout`, i.e. exactly those of ``MCSampler(seed=seed)``.
    """
    if samples < 1:
        raise ConfigError(f"samples must be >= 1, got {samples}")
    temperature = _temperature_tensor(temperature)
    dist = _depth_dist(model, depth_dist)
    x = x.to(_model_device(model, x))
    stats = MCStats()
    masks = SeededDropout(model, seed) if seed is not None else contextlib.nullcontext()
    with torch.no_grad(), mc_dropout_mode(model), masks:
        for t in range(samples):
            if seed is not None:
                masks.set_samples(range(t, t + 1))
            consume_outputs(model(x), 1, stats, temperature, dist, return_samples)
    return finalize_stats(stats)


class MCSampler:
    """Fused MC-dropout maps for a batch: ``MCSampler(model, samples=20)(x)`` -> dict.

    ``memory_budget_mb`` bounds the replicated suffix batch: k samples run together with
    k * bytes_per_sample <= budget (1 <= k <= T). bytes_per_sample is measured on the first sample
    of the first call for each input shape (that sample runs alone): on CUDA the peak allocated
    memory of the suffix plus the map updates (``torch.cuda.max_memory_allocated``); on CPU the
    bytes of every distinct tensor that a suffix module outputs (an over-estimate, see
    :class:`ActivationCounter`) plus 5 float32 copies of the outputs (softmax, log-softmax and the
    accumulator temporaries). Both add one copy of the prefix state, which ``repeat_state`` copies.
    ``use_split=False`` replicates the input and runs the full network per sample instead (the
    "batched full passes" baseline). ``amp_dtype`` (e.g. torch.bfloat16) runs the network under
    autocast; maps are always accumulated in float32 (float64 for depth).
    """

    def __init__(
        self,
        model: nn.Module,
        samples: int = 20,
        memory_budget_mb: float = 1024.0,
        seed: int = 0,
        temperature: float | torch.Tensor = 1.0,
        return_samples: bool = False,
        use_split: bool = True,
        amp_dtype: torch.dtype | None = None,
        depth_dist: str | None = None,
    ) -> None:
        if int(samples) < 1:
            raise ConfigError(f"mc.samples must be >= 1, got {samples}")
        if not float(memory_budget_mb) > 0:
            raise ConfigError(f"mc.memory_budget_mb must be > 0, got {memory_budget_mb}")
        self.model = model
        self.samples = int(samples)
        self.memory_budget_mb = float(memory_budget_mb)
        self.seed = int(seed)
        self.temperature = _temperature_tensor(temperature)
        self.return_samples = return_samples
        # A model without the staged interface can still be sampled by full passes.
        self.use_split = use_split and hasattr(model, "forward_prefix")
        self.amp_dtype = amp_dtype
        self.depth_dist = _depth_dist(model, depth_dist)
        self._bytes_per_sample: dict[tuple, int] = {}
        self.last_chunk_size: int | None = None  # k used by the latest call (for benchmarks)

    def __call__(self, x: torch.Tensor, first_sample: int = 0) -> dict[str, torch.Tensor]:
        """x (B, 3, H, W) -> fused maps. Samples use mask indices first_sample .. +T-1."""
        stats, used = self.accumulate(x, first_sample)
        return finalize_stats(stats, self.samples if used == 1 else None)

    def chunk_size(self, bytes_per_sample: int, remaining: int) -> int:
        budget = self.memory_budget_mb * 2**20
        return max(1, min(remaining, int(budget // max(bytes_per_sample, 1))))

    def accumulate(self, x: torch.Tensor, first_sample: int = 0) -> tuple[MCStats, int]:
        """Run the T samples (or 1 when the model has no active dropout: all samples would be
        equal) and return (stats, number of samples run)."""
        if x.dim() != 4:
            raise SeguncertError(
                f"MCSampler expects an image batch (B, 3, H, W), got {tuple(x.shape)}"
            )
        model = self.model
        device = _model_device(model, x)
        x = x.to(device)
        total = self.samples if has_active_dropout(model) else 1
        key = (tuple(x.shape), x.dtype, str(device), self.use_split, self.amp_dtype)
        stats = MCStats()
        rng_devices = [device] if device.type == "cuda" else []
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.no_grad())
            stack.enter_context(torch.random.fork_rng(devices=rng_devices))
            stack.enter_context(mc_dropout_mode(model))
            masks = stack.enter_context(SeededDropout(model, self.seed))
            stack.enter_context(_autocast(device, self.amp_dtype))
            # Anything stochastic besides MCDropout sees a fixed stream, not the caller's RNG.
            torch.manual_seed(self.seed)
            state = model.forward_prefix(x) if self.use_split else {"x": x}
            done = 0
            while done < total:
                measured = self._bytes_per_sample.get(key)
                k = 1 if measured is None else self.chunk_size(measured, total - done)
                ids = range(first_sample + done, first_sample + done + k)
                masks.set_samples(ids)
                if measured is None:
                    self._bytes_per_sample[key] = self._measure(state, stats, device)
                else:
                    self._run_chunk(state, k, stats)
                self.last_chunk_size = k
                done += k
        return stats, total

    def _run_chunk(self, state: dict, k: int, stats: MCStats) -> dict:
        if self.use_split:
            out = self.model.forward_suffix(repeat_state(state, k))
        else:
            out = self.model(repeat_state(state, k)["x"])
        consume_outputs(out, k, stats, self.temperature, self.depth_dist, self.return_samples)
        return out

    def _suffix_modules(self) -> list[nn.Module]:
        if not self.use_split:
            return list(self.model.modules())
        stages = self.model.stages[self.model.split_index :]
        return [m for stage in stages for m in stage.modules()]

    def _measure(self, state: dict, stats: MCStats, device: torch.device) -> int:
        """Run one sample and return the estimated bytes per replicated sample."""
        state_bytes = tensor_bytes(state)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            before = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            self._run_chunk(state, 1, stats)
            peak = torch.cuda.max_memory_allocated(device) - before
            return int(peak + state_bytes)
        with ActivationCounter(self._suffix_modules()) as counter:
            out = self._run_chunk(state, 1, stats)
        post = 5 * sum(v.numel() * 4 for v in flat_tensors(out))
        return int(counter.total(exclude=state) + state_bytes + post)
