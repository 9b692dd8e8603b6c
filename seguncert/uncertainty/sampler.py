"""Monte-Carlo dropout sampling with a shared deterministic prefix and bounded memory.

``MCSampler(model, samples=T)(x)`` runs ``model.forward_prefix(x)`` once, then the stochastic
suffix on the prefix state replicated k samples at a time (k chosen from a memory budget), and
streams each chunk into the accumulators of :mod:`seguncert.uncertainty.maps`; it never holds
T x C x H x W unless ``return_samples`` or ``return_logits`` is set.

Noise-integrated predictive (``noise_samples=S > 0``, heteroscedastic heads: ``logit_log_var``
present; method.md). The loss fits E_ε softmax(f + σ ε), so each dropout sample t contributes
p_t = (1/S) Σ_s softmax(cal(f_t + σ_t ε_s, base=f_t)), σ_t = exp(logit_log_var / 2) broadcast
over classes, ε_s ~ N(0, I) of shape (B, C, H, W). The draws come after the network: S costs S
noise draws, calibrations and softmaxes of the chunk's logits, never an extra network pass; they
run one draw at a time over the chunk, so memory grows by a few copies of the chunk's logits, not
by S. The maps then follow the decomposition of :mod:`~seguncert.uncertainty.maps` with these
p_t. S = 0 (or a head without ``logit_log_var``) uses p_t = softmax(cal(f_t)), as before.

Reproducibility. Every active :class:`MCDropout` draws its mask *per MC sample* from a generator
seeded by (seed, sample index t, layer index, call index) -- see :class:`SeededDropout` -- and the
logit noise ε_s, shared by the call's T samples (common random numbers: per-sample draws would
add their own Monte-Carlo error to the mutual information), from one seeded by (seed, first
sample of the call, s) (:class:`SeededNoise`), instead of from the global RNG. So the randomness
of sample t does not depend on how samples are chunked: the result
is the same for every chunk size k and memory budget (up to float rounding of batched vs
unbatched kernels, ~1e-6), and ``naive_mc(..., seed=s)`` (T separate full passes) draws exactly
the same masks and noise as ``MCSampler(seed=s)``. Both depend on the batch size B (one draw
covers the whole replicated batch of a sample). The caller's global RNG state is left untouched.
Masks follow ``nn.Dropout``: keep with probability 1-p, scale kept units by 1/(1-p).

Calibration. ``calibrator`` cal(z, base=None) -> z maps logits (N, C, H, W) before every softmax,
noisy or not (``base`` = the sample's noise-free logits f_t, for calibrators that look at the
prediction, e.g. a local temperature); without one, ``temperature`` (scalar or per-class (C,))
divides the logits. Neither touches ``logit_var`` or depth.

Output keys (all float32 on the model's device, (B, H, W) unless stated):
- segmentation (``logits``): ``probs`` (B, C, H, W) = p̄, ``pred`` long, ``entropy`` (total),
  ``aleatoric`` (expected entropy), ``epistemic`` (mutual information), ``prob_var`` (variance
  over t of p_t of the predicted class) and, for heteroscedastic heads, ``logit_var`` (mean
  learned logit variance σ² of the predicted class) and, when S > 0, ``noise_aleatoric``.
- depth-only (``depth_loc``): ``depth``, ``aleatoric_var``, ``epistemic_var``, ``total_var`` and,
  for the overlay tools, ``aleatoric`` / ``epistemic`` = the standard deviations (sqrt of the vars).
- joint: the segmentation keys unchanged plus ``depth``, ``depth_aleatoric_var``,
  ``depth_epistemic_var``, ``depth_total_var``.
- ``return_samples=True``: ``samples`` = per-sample calibrated (noise-integrated) probabilities
  p_t (T, B, C, H, W) for segmentation / joint models, per-sample depth means (T, B, H, W) for
  depth-only models; joint models also get ``depth_samples`` (T, B, H, W).
- ``return_logits=True`` (segmentation / joint, for fitting calibrators): ``logits`` = the raw,
  uncalibrated, noise-free f_t (T, B, C, H, W) and, when present, ``logit_log_var``
  (T, B, 1 or C, H, W), float32; they cost 4 * T * B * (C + 1 or 2C) * H * W bytes beyond the
  memory budget (which bounds only the per-chunk temporaries), e.g. ~166 MB per 360x480 image
  at T = 20, C = 11 with a shared variance.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from ..errors import ConfigError, SeguncertError
from ..models.base import has_active_dropout, mc_dropout_mode, repeat_state
from .linear_head import LinearHead
from .masks import ActivationCounter, SeededDropout, SeededNoise, flat_tensors, tensor_bytes
from .predictive import (  # noqa: F401  (MCStats, finalize_stats: part of this module's API)
    MCStats,
    SampleOptions,
    _noise_count,
    _temperature_tensor,
    consume_outputs,
    finalize_stats,
    make_calibrator,
)

Calibrator = Callable[..., torch.Tensor]  # cal(z (N, C, H, W), base=None) -> (N, C, H, W)

# On the CPU a chunk bigger than about the last-level cache only costs: the kernels already run
# in parallel over pixels, and (k, ...) activations that spill to DRAM (and are freshly
# page-faulted on every call) made a T = 20 U-Net suffix at 360x480 ~1.6x slower with k = 6 than
# with k = 1. Small frames still batch (a 64x96 suffix fits a few samples).
CPU_CHUNK_MB = 32.0


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
    noise_samples: int = 0,
    calibrator: Calibrator | None = None,
    return_logits: bool = False,
) -> dict[str, torch.Tensor]:
    """The textbook estimator: ``samples`` full forward passes of x (B, 3, H, W), one at a time,
    dropout on and BatchNorm in eval; same arguments and output dict as :class:`MCSampler`.

    ``seed=None`` uses torch's own dropout and global RNG (the benchmark baseline). An int seed
    draws the masks of :class:`SeededDropout` and the noise of :class:`SeededNoise`, i.e. exactly
    those of ``MCSampler(seed=seed)``.
    """
    if samples < 1:
        raise ConfigError(f"samples must be >= 1, got {samples}")
    opts = SampleOptions(
        make_calibrator(temperature, calibrator),
        _noise_count(noise_samples),
        SeededNoise(seed),
        _depth_dist(model, depth_dist),
        return_samples,
        return_logits,
    )
    x = x.to(_model_device(model, x))
    stats = MCStats()
    masks = SeededDropout(model, seed) if seed is not None else contextlib.nullcontext()
    with torch.no_grad(), mc_dropout_mode(model), masks:
        for t in range(samples):
            if seed is not None:
                masks.set_samples(range(t, t + 1))
            consume_outputs(model(x), 1, stats, opts, range(t, t + 1))
    return finalize_stats(stats)


class MCSampler:
    """Fused MC-dropout maps for a batch: ``MCSampler(model, samples=20)(x)`` -> dict.

    ``memory_budget_mb`` bounds the replicated suffix batch: k samples run together with
    k * bytes_per_sample <= budget (1 <= k <= T). bytes_per_sample is measured on the first sample
    of the first call for each input shape (that sample runs alone): on CUDA the peak allocated
    memory of the suffix plus the map updates (``torch.cuda.max_memory_allocated``); on CPU the
    bytes of every distinct tensor that a suffix module outputs (an over-estimate, see
    :class:`ActivationCounter`) plus 5 float32 copies of the outputs (softmax, log-softmax and the
    accumulator temporaries) and, with logit noise, 5 more of the logits (the reused noise
    buffer, the running sum over draws, a calibrator's output and its softmax, and slack for the
    calibrator's own temporaries). Both add one copy of the prefix state, which ``repeat_state``
    copies. ``noise_samples``, ``calibrator`` and ``return_logits``: see the module docstring; a
    model without active dropout runs one sample, so its S noise draws are the whole predictive
    and its epistemic map is 0.
    ``use_split=False`` replicates the input and runs the full network per sample instead (the
    "batched full passes" baseline). ``amp_dtype`` (e.g. torch.bfloat16) runs the network under
    autocast; maps are always accumulated in float32 (float64 for depth).

    Cheaper arithmetic, same numbers (to float rounding, with the same masks as ``naive_mc``):
    on the CPU a chunk also stays within ``cpu_chunk_mb`` (see :data:`CPU_CHUNK_MB`); the
    model may precompute per-image parts of its suffix (``prepare_suffix``: the U-Net computes
    the skip half of each decoder block's first convolution once and broadcasts it); and a
    plain segmentation head runs as one matmul per sample through the accumulator's in-place
    softmax (:class:`~seguncert.uncertainty.linear_head.LinearHead`), on the shared prefix
    features when the head's dropout is the only one (classifier placement: no replication).
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
        noise_samples: int = 0,
        calibrator: Calibrator | None = None,
        return_logits: bool = False,
        cpu_chunk_mb: float = CPU_CHUNK_MB,
    ) -> None:
        if int(samples) < 1:
            raise ConfigError(f"mc.samples must be >= 1, got {samples}")
        if not float(memory_budget_mb) > 0:
            raise ConfigError(f"mc.memory_budget_mb must be > 0, got {memory_budget_mb}")
        self.model = model
        self.samples = int(samples)
        self.memory_budget_mb = float(memory_budget_mb)
        self.cpu_chunk_mb = float(cpu_chunk_mb)
        self.seed = int(seed)
        self.temperature = _temperature_tensor(temperature)
        self.calibrator = make_calibrator(temperature, calibrator)
        self.noise_samples = _noise_count(noise_samples)
        self._noise = SeededNoise(self.seed)
        self.return_samples = return_samples
        self.return_logits = return_logits
        # A model without the staged interface can still be sampled by full passes.
        self.use_split = use_split and hasattr(model, "forward_prefix")
        self.amp_dtype = amp_dtype
        self.depth_dist = _depth_dist(model, depth_dist)
        self._bytes_per_sample: dict[tuple, int] = {}
        self.last_chunk_size: int | None = None  # k used by the latest call (for benchmarks)
        # The segmentation head as one matmul per sample (same numbers, several times cheaper).
        self._head = LinearHead.match(model, self)

    def __call__(self, x: torch.Tensor, first_sample: int = 0) -> dict[str, torch.Tensor]:
        """x (B, 3, H, W) -> fused maps. Samples use mask indices first_sample .. +T-1."""
        stats, used = self.accumulate(x, first_sample)
        return finalize_stats(stats, self.samples if used == 1 else None)

    def chunk_size(self, bytes_per_sample: int, remaining: int, device=None) -> int:
        """Samples per chunk: within the memory budget and, on the CPU, ``cpu_chunk_mb``."""
        budget = self.memory_budget_mb
        if device is None or torch.device(device).type == "cpu":
            budget = min(budget, self.cpu_chunk_mb)
        return max(1, min(remaining, int(budget * 2**20 // max(bytes_per_sample, 1))))

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
            self._noise.call_sample = first_sample  # one ε_s per call, shared by its samples
            stack.enter_context(_autocast(device, self.amp_dtype))
            # Anything stochastic besides MCDropout sees a fixed stream, not the caller's RNG.
            torch.manual_seed(self.seed)
            if self.use_split:
                state = model.forward_prefix(x)
                state = model.prepare_suffix(state) if hasattr(model, "prepare_suffix") else state
            else:
                state = {"x": x}
            ids = range(first_sample, first_sample + total)
            head = self._head
            if (
                head is not None
                and model.split_index == len(model.stages) - 1
                and (head.applies_to(state["x"], state["input_size"]))
            ):
                # The head is the whole suffix: one feature map for every sample, no chunks.
                masks.set_samples(ids)
                head.run(state["x"], stats, ids, masks, shared=True)
                self.last_chunk_size = 1
            else:
                self._run_chunks(state, stats, masks, key, ids)
        return stats, total

    def _run_chunks(self, state: dict, stats: MCStats, masks, key: tuple, ids: range) -> None:
        """The generic suffix on the replicated state, in budget-sized chunks of ``ids``."""
        # a model without active dropout leaves no "x": the prefix already ran the whole net
        any_tensor = next(v for v in flat_tensors(state) if isinstance(v, torch.Tensor))
        device = _model_device(self.model, any_tensor)
        done, total = 0, len(ids)
        while done < total:
            measured = self._bytes_per_sample.get(key)
            k = 1 if measured is None else self.chunk_size(measured, total - done, device)
            chunk = ids[done : done + k]
            masks.set_samples(chunk)
            if measured is None:
                self._bytes_per_sample[key] = self._measure(state, stats, device, chunk, masks)
            else:
                self._run_chunk(state, stats, chunk, masks)
            self.last_chunk_size = k
            done += k

    def _run_chunk(self, state: dict, stats: MCStats, ids: range, masks) -> dict:
        k, model = len(ids), self.model
        if not self.use_split:
            out = model(repeat_state(state, k)["x"])
        elif self._head is None:
            out = model.forward_suffix(repeat_state(state, k))
        else:
            last = len(model.stages) - 1
            rest = model.run_stages(repeat_state(state, k), model.split_index, last)
            if self._head.applies_to(rest["x"], rest["input_size"]):
                return {"logits": self._head.run(rest["x"], stats, ids, masks, shared=False)}
            out = model.outputs(model.run_stages(rest, last))
        opts = SampleOptions(
            self.calibrator,
            self.noise_samples,
            self._noise,
            self.depth_dist,
            self.return_samples,
            self.return_logits,
        )
        consume_outputs(out, k, stats, opts, ids)
        return out

    def _suffix_modules(self) -> list[nn.Module]:
        if not self.use_split:
            return list(self.model.modules())
        stages = self.model.stages[self.model.split_index :]
        return [m for stage in stages for m in stage.modules()]

    def _measure(self, state: dict, stats: MCStats, device: torch.device, ids: range, masks) -> int:
        """Run one sample and return the estimated bytes per replicated sample."""
        state_bytes = tensor_bytes(state)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            before = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            self._run_chunk(state, stats, ids, masks)
            peak = torch.cuda.max_memory_allocated(device) - before
            return int(peak + state_bytes)
        with ActivationCounter(self._suffix_modules()) as counter:
            out = self._run_chunk(state, stats, ids, masks)
        post = 5 * sum(v.numel() * 4 for v in flat_tensors(out))
        if self.noise_samples and "logit_log_var" in out:
            post += 5 * out["logits"].numel() * 4
        return int(counter.total(exclude=state) + state_bytes + post)
