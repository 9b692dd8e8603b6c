"""Uncertainty maps from MC samples: pure tensor functions plus streaming accumulators.

Shapes: T samples, B batch, C classes, H x W pixels. Entropies are in nats. The direct functions
take all T samples at once (for tests and small inputs); the accumulators give the same maps from
chunks of samples, holding only fixed-size per-pixel sums, so the sampler never holds T x C x H x W.

Decomposition (see ``method.md``), one for every segmentation model: with p_t the probabilities
of dropout sample t (for a heteroscedastic head sampled with logit noise, the noise-integrated
p_t = mean_s softmax(cal(f_t + σ_t ε_s)); otherwise softmax(cal(f_t))) and p̄ = mean_t p_t:
total = predictive entropy H[p̄]; aleatoric = expected entropy mean_t H[p_t] (so it includes the
learned noise's effect on the softmax, not raw σ); epistemic = mutual information with the
weights = total - aleatoric (>= 0 by Jensen; clamped at 0 against rounding). noise_aleatoric =
mean_t (H[p_t] - H[softmax(cal(f_t))]), clamped at 0: the part of the aleatoric entropy that the
learned logit noise adds. Regression: aleatoric = mean predicted variance, epistemic = variance of
the predicted means, total = their sum.

Accumulator counts may be a number or a per-pixel weight tensor (B, 1, H, W): the temporal sampler
decays, gates and warps history sums per pixel, and every sum is linear in the samples, so scaling
or (bilinearly) warping all sums and the count together keeps every map a proper weighted mean.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

# One definition of σ² / 2b² for the losses and the maps (re-exported for the sampler).
from ..losses.regression import predictive_variance as predictive_variance

Tensor = torch.Tensor
_LOG2E = 1.4426950408889634  # log2(e): exp(z) = exp2(z * log2 e)
_LN2 = 0.6931471805599453


def _entropy(p: Tensor, dim: int) -> Tensor:
    # entr(0) == 0, so classes with zero probability add nothing instead of NaN; entr is
    # -x log x in one vectorised kernel (on the CPU ~4x faster than xlogy(x, x).neg()).
    return torch.special.entr(p).sum(dim)


def predictive_entropy(p_mean: Tensor) -> Tensor:
    """Entropy of the fused distribution: p_mean (B, C, H, W) -> (B, H, W), nats, in [0, log C]."""
    return _entropy(p_mean, 1).clamp_min(0.0)


def expected_entropy(probs: Tensor) -> Tensor:
    """Mean entropy of the individual samples: probs (T, B, C, H, W) -> (B, H, W)."""
    return _entropy(probs, 2).mean(0).clamp_min(0.0)


def mutual_information(probs: Tensor) -> Tensor:
    """Epistemic part: H[mean_t p_t] - mean_t H[p_t], probs (T, B, C, H, W) -> (B, H, W), >= 0."""
    return (predictive_entropy(probs.mean(0)) - expected_entropy(probs)).clamp_min(0.0)


def predicted_class_variance(probs: Tensor, pred: Tensor | None = None) -> Tensor:
    """Variance over samples (population, 1/T) of the probability of the predicted class.

    probs (T, B, C, H, W); pred (B, H, W) long, default argmax of the mean -> (B, H, W).
    """
    if pred is None:
        pred = probs.mean(0).argmax(1)
    index = pred.unsqueeze(0).unsqueeze(2).expand(probs.shape[0], -1, 1, -1, -1)
    return probs.gather(2, index).squeeze(2).var(0, unbiased=False)


def regression_uncertainty(locs: Tensor, variances: Tensor | None = None) -> dict[str, Tensor]:
    """Regression maps from T samples: locs (T, B, 1, H, W) predicted means, variances the same
    shape (predicted σ² or 2b² per sample) or None (no learned noise: aleatoric 0).

    Returns ``depth`` (mean), ``aleatoric_var`` (mean predicted variance), ``epistemic_var``
    (population variance of the means), ``total_var`` (their sum); each (B, H, W).
    """
    mean = locs.mean(0)[:, 0]
    epistemic = locs.var(0, unbiased=False)[:, 0]
    aleatoric = variances.mean(0)[:, 0] if variances is not None else torch.zeros_like(mean)
    return {
        "depth": mean,
        "aleatoric_var": aleatoric,
        "epistemic_var": epistemic,
        "total_var": aleatoric + epistemic,
    }


def _stack(chunk: Tensor | Sequence[Tensor]) -> Tensor:
    """A (k, B, ...) tensor from either such a tensor or a list of k (B, ...) tensors."""
    return chunk if isinstance(chunk, Tensor) else torch.stack(list(chunk))


class _SumAccumulator:
    """Named per-pixel sums plus a count; shared arithmetic for the temporal sampler."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.count: float | Tensor = 0.0

    def __len__(self) -> int:  # truthiness: has anything been accumulated?
        return len(self.sums)

    def _add(self, name: str, value: Tensor) -> None:
        self.sums[name] = value if name not in self.sums else self.sums[name] + value

    def _add_(self, name: str, value: Tensor) -> None:
        """In-place add; the first value is copied so no caller's tensor is aliased."""
        if name in self.sums:
            self.sums[name].add_(value)
        else:
            self.sums[name] = value.clone()

    def _count_map(self) -> Tensor:
        """The count as a (B, 1, H, W) tensor (so it can be warped or gated per pixel)."""
        if isinstance(self.count, Tensor):
            return self.count
        ref = next(iter(self.sums.values()))
        return torch.full_like(ref[:, :1], float(self.count))

    def scale_(self, weight: float | Tensor) -> None:
        """Multiply every sum and the count by ``weight`` (a number or (B, 1, H, W))."""
        self.sums = {
            k: v * weight.to(v.dtype) if isinstance(weight, Tensor) else v * weight
            for k, v in self.sums.items()
        }
        self.count = self._count_map() * weight if self.sums else 0.0

    def apply_(self, fn: Callable[[Tensor], Tensor]) -> None:
        """Apply a linear per-pixel map (e.g. a flow warp) to every (B, *, H, W) sum and the count."""
        if not self.sums:
            return
        count = self._count_map()
        self.sums = {k: fn(v) for k, v in self.sums.items()}
        self.count = fn(count)

    def merge_(self, other: _SumAccumulator) -> None:
        """Add another accumulator's sums and count to this one (same maps, same shapes)."""
        for k, v in other.sums.items():
            self._add(k, v)
        self.count = self.count + other.count

    def _mean(self, name: str) -> Tensor:
        return self._mean_of(self.sums[name])

    def _mean_of(self, total: Tensor) -> Tensor:
        """A sum (or a gathered slice of one, same (B, *, H, W) layout) over the count."""
        count = self.count
        if isinstance(count, Tensor):
            count = count.to(total.dtype).clamp_min(1e-12)
        return total / count


def softmax_sums_(z: Tensor, e: Tensor, sums: dict, base2: bool = False) -> Tensor:
    """Add one sample's p = softmax(z) to ``sums["p"]``, p² to ``sums["p2"]`` and its entropy
    to ``sums["ent"]``, in place. z (B, C, ...) float32 logits, *overwritten*; e a scratch
    tensor of z's shape, which receives p (returned); the sums (B, C, ...) and (B, 1, ...)
    may be strided views (a tile of the full sums).

    ``base2``: z comes multiplied by log2(e) (a caller that folds the factor into its weights
    saves a pass).

    Every step runs in place; exp runs as exp2 (on the CPU torch's exp was measured ~3x slower
    than the vectorised exp2); the entropy comes from the softmax's own intermediates,
    H = log s - sum_c p_c z_c with z the logits less their max and s = sum_c exp(z_c) in
    [1, C], instead of a log-softmax pass.
    """
    z.sub_(z.amax(1, keepdim=True))  # <= 0: no overflow; the max class gives s >= 1
    if base2:
        torch.exp2(z, out=e)
    else:
        torch.mul(z, _LOG2E, out=e).exp2_()
    s = e.sum(1, keepdim=True)
    p = e.div_(s)
    zp = z.mul_(p).sum(1, keepdim=True)
    sums["ent"].add_(s.log_()).sub_(zp, alpha=_LN2 if base2 else 1.0)
    sums["p"].add_(p)
    sums["p2"].addcmul_(p, p)
    return p


class SegmentationAccumulator(_SumAccumulator):
    """Streaming fused segmentation maps from chunks of per-sample probabilities.

    Holds sum p, sum p² (B, C, H, W), sum of per-sample entropy (B, 1, H, W) and, for
    heteroscedastic heads, sum of the learned logit variance σ² (B, 1 or C, H, W) and (when the
    samples are noise-integrated) sum of the entropy the noise adds (B, 1, H, W). Float32 sums are
    enough here: probabilities lie in [0, 1], so for T <= ~100 the rounding of E[p²] - E[p]² is
    below T * 6e-8 (absolute), far under any variance worth showing; the result is clamped at 0.
    """

    def update(
        self,
        probs: Tensor | Sequence[Tensor],
        logit_log_var: Tensor | Sequence[Tensor] | None = None,
        log_probs: Tensor | Sequence[Tensor] | None = None,
        noise_free_log_probs: Tensor | Sequence[Tensor] | None = None,
    ) -> None:
        """Add k samples: probs (k, B, C, H, W) or a list of k (B, C, H, W); logit_log_var
        (k, B, 1 or C, H, W) optional; log_probs (same as probs) optional, used for a more
        accurate per-sample entropy when given (log_softmax output). noise_free_log_probs (same
        shape): for noise-integrated probs, the log-softmax of each sample's calibrated logits
        without noise; adds the ``noise_aleatoric`` map. Pass it on every update or on none."""
        p = _stack(probs).float()
        lp = _stack(log_probs).float() if log_probs is not None else None
        clean = _stack(noise_free_log_probs).float() if noise_free_log_probs is not None else None
        # One sample at a time, in place: temporaries stay (B, C, H, W) instead of
        # (k, B, C, H, W), which on the CPU is memory traffic, the cost of these maps.
        for t in range(p.shape[0]):
            pt = p[t]
            if lp is not None:
                # p * log p with p -> 0 is 0; lp is finite there, so the product is exactly 0.
                ent = (pt * lp[t]).sum(1, keepdim=True).neg_()
            else:
                ent = torch.xlogy(pt, pt).sum(1, keepdim=True).neg_()
            self._add_("p", pt)
            self._add_("ent", ent)
            if clean is not None:
                # H[p_t] - H[softmax(cal(f_t))]: the logit noise's share of this sample's entropy.
                self._add_("noise_ent", ent.add_((clean[t].exp() * clean[t]).sum(1, keepdim=True)))
            if "p2" in self.sums:
                self.sums["p2"].addcmul_(pt, pt)
            else:
                self.sums["p2"] = pt * pt
        if logit_log_var is not None:
            self._add("logit_var", _stack(logit_log_var).float().exp().sum(0))
        self.count = self.count + p.shape[0]

    def update_logits(
        self,
        logits: Tensor,
        logit_log_var: Tensor | None = None,
        base2: bool = False,
        logit_var: Tensor | None = None,
    ) -> Tensor:
        """Add one sample from its calibrated logits (B, C, H, W) float32, which are
        *overwritten* (they serve as scratch space); logit_log_var (B, 1 or C, H, W) optional,
        or ``logit_var``, its exp, from a caller that has it (summed as given).
        Returns p = softmax(logits), a view of a buffer that the next call reuses. ``base2``:
        see :func:`softmax_sums_`.

        The same sums as ``update(softmax(z), log_probs=log_softmax(z))`` (to float rounding)
        in about a third of the time (see :func:`softmax_sums_`).
        """
        if logit_log_var is not None:
            logit_var = torch.mul(logit_log_var.float(), _LOG2E).exp2_()
        sums = self.zero_sums_(logits.shape, logits.device, logit_var)
        p = softmax_sums_(logits, self._scratch_like(logits), sums, base2)
        if logit_var is not None:
            sums["logit_var"].add_(logit_var)
        self.count = self.count + 1
        return p

    def zero_sums_(self, shape, device, logit_var: Tensor | tuple | None = None) -> dict:
        """The sums that :func:`softmax_sums_` adds to, created as zeros where missing: "p",
        "p2" of ``shape`` (B, C, ...), "ent" (B, 1, ...) and, when ``logit_var`` (a tensor, or
        its shape) is given, "logit_var" of its shape. Returns ``self.sums``."""
        one = (shape[0], 1, *shape[2:])
        want = {"p": shape, "p2": shape, "ent": one}
        if logit_var is not None:
            want["logit_var"] = tuple(getattr(logit_var, "shape", logit_var))
        for name, size in want.items():
            if name not in self.sums:
                self.sums[name] = torch.zeros(size, device=device)
        return self.sums

    def _scratch_like(self, z: Tensor) -> Tensor:
        """A reused (B, C, H, W) float32 buffer (not a sum: scale_ / apply_ never see it)."""
        buf = getattr(self, "_scratch", None)
        if buf is None or buf.shape != z.shape or buf.device != z.device:
            buf = self._scratch = torch.empty(z.shape, dtype=torch.float32, device=z.device)
        return buf

    def finalize(self) -> dict[str, Tensor]:
        """Fused maps: ``probs`` (B, C, H, W), ``pred`` (B, H, W) long, ``entropy``,
        ``aleatoric``, ``epistemic``, ``prob_var`` and (when accumulated) ``logit_var`` and
        ``noise_aleatoric``, (B, H, W)."""
        if not self.sums:
            raise ValueError("SegmentationAccumulator.finalize() before any update()")
        p_mean = self._mean("p")
        # max over classes gives argmax's index (the first maximum) and the value in one
        # kernel; argmax alone over a strided class axis was ~10x slower on the CPU.
        p_pred, pred = p_mean.max(1)
        total = predictive_entropy(p_mean)
        aleatoric = self._mean("ent")[:, 0].clamp_min(0.0)
        idx = pred.unsqueeze(1)
        # E[p²] - E[p]² in float32: see the class docstring for why this cancellation is harmless.
        p2_pred = self._mean_of(self.sums["p2"].gather(1, idx))[:, 0]
        prob_var = (p2_pred - p_pred * p_pred).clamp_min(0.0)
        out = {
            "probs": p_mean,
            "pred": pred,
            "entropy": total,
            "aleatoric": aleatoric,
            "epistemic": (total - aleatoric).clamp_min(0.0),
            "prob_var": prob_var,
        }
        if "noise_ent" in self.sums:
            out["noise_aleatoric"] = self._mean("noise_ent")[:, 0].clamp_min(0.0)
        if "logit_var" in self.sums:
            var = self._mean("logit_var")
            out["logit_var"] = var[:, 0] if var.shape[1] == 1 else var.gather(1, idx)[:, 0]
        return out


class RegressionAccumulator(_SumAccumulator):
    """Streaming regression maps: sums of loc, loc² and predicted variance, each (B, 1, H, W).

    Sums are float64: depths reach tens of metres, so loc² ~ 1e3-1e4 and float32 rounding of
    E[x²] - E[x]² (~1e-3 m² per term) would swamp small epistemic variances; the maps are tiny,
    so the cost is negligible. The variance is still clamped at 0.
    """

    def update(
        self, locs: Tensor | Sequence[Tensor], variances: Tensor | Sequence[Tensor] | None = None
    ) -> None:
        """Add k samples: locs (k, B, 1, H, W) (or a list of (B, 1, H, W)); variances likewise
        (predicted variances, not log scales) or None."""
        x = _stack(locs).double()
        self._add("loc", x.sum(0))
        self._add("loc2", (x * x).sum(0))
        if variances is not None:
            self._add("var", _stack(variances).double().sum(0))
        self.count = self.count + x.shape[0]

    def finalize(self) -> dict[str, Tensor]:
        """``depth``, ``aleatoric_var``, ``epistemic_var``, ``total_var``: float32 (B, H, W)."""
        if not self.sums:
            raise ValueError("RegressionAccumulator.finalize() before any update()")
        mean = self._mean("loc")
        epistemic = (self._mean("loc2") - mean * mean).clamp_min(0.0)
        aleatoric = self._mean("var") if "var" in self.sums else torch.zeros_like(mean)
        out = {
            "depth": mean,
            "aleatoric_var": aleatoric,
            "epistemic_var": epistemic,
            "total_var": aleatoric + epistemic,
        }
        return {k: v[:, 0].float() for k, v in out.items()}
