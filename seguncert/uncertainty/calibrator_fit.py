"""Fitting calibrators (:mod:`.calibrators`) by the NLL of the MC-dropout predictive.

Data: a list of batch dicts, ``logits`` (T, B, C, H, W) = the T dropout samples' logits f_t,
optional ``log_var`` (T, B, 1 or C, H, W) = the heteroscedastic head's logit log-variance, and
``labels`` (B, H, W) int64 with 255 = ignore. Objective, over the N labelled pixels i:

    L(θ) = -(1/N) Σ_i log (1/(T S)) Σ_t Σ_s softmax(cal_θ(f_ti + σ_ti ⊙ ε_si, base=f_ti))_{y_i}

with σ = exp(log_var / 2) and ε_s ~ N(0, I) (S = ``noise_samples``; S = 0 or no ``log_var``
means the noise-free f_t, S = 1 term). Each noise draw ε_s is shared by the T dropout samples of
a pixel, as in p̄ = (1/TS) Σ_t Σ_s softmax(f_t + σ_t ε_s): common random numbers, so differences
between dropout samples come from f_t and σ_t, not from the noise. The draws are fixed by
``seed`` (one generator, read in a fixed order), so the fit is deterministic and
:func:`predictive_nll` with the same seed evaluates the same objective. Plus, for ``dirichlet``,
the ODIR penalty λ ||offdiag(W)||² / (C(C-1)) + μ ||b||² / C (``odir_lambda``, ``odir_mu``,
default 1e-3 each: mild; select them on held-out data with :func:`predictive_nll`) and for
``local_temperature`` ``weight_decay`` (default 1e-2) times the squared conv weights: the net
sees each pixel's neighbourhood, so with little data and weak decay it memorises labels (the fit
NLL falls while held-out NLL rises); check it against ``temperature`` with :func:`predictive_nll`.

Optimiser: full-batch L-BFGS (strong Wolfe) in float64 on the device of the logits, positive
parameters (τ) in log space. ``local_temperature`` starts from τ(x) ≡ the fitted global
temperature (or ``init_temperature``) and uses ``hidden`` (default 16) channels. Memory: only
labelled pixels are gathered (float64, T x N x C); the S x T x m x C noisy logits are built in
blocks of m pixels and each block's loss is back-propagated at once (parameter and τ-map
gradients are accumulated through detached leaves), so memory stays bounded for any N, T, S.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from ..data.common import IGNORE_INDEX
from ..errors import ConfigError, DataError, SeguncertError
from .calibrators import KINDS, Calibrator, LocalTemperature

Tensor = torch.Tensor
_BUDGET = 1 << 21  # elements of one (S, T, m, C) block of noisy logits
_OPTIONS: dict[str, dict] = {
    "dirichlet": {"odir_lambda": 1e-3, "odir_mu": 1e-3},
    "local_temperature": {"hidden": 16, "init_temperature": None, "weight_decay": 1e-2},
}


@dataclass
class _Image:
    """One image's labelled pixels: fv (T, n, C) logits, sv (T, n, 1|C) σ or None, y (n,),
    idx (n,) their flat pixel indices, f (T, C, H, W) the full maps (spatial kinds only)."""

    fv: Tensor
    sv: Tensor | None
    y: Tensor
    idx: Tensor
    f: Tensor | None


def _check_maps(logits, log_var, where: str) -> tuple[Tensor, Tensor | None]:
    f = torch.as_tensor(logits)
    if f.dim() != 5 or not f.is_floating_point() or f.shape[2] < 2:
        raise DataError(f"{where}: logits must be float (T, B, C, H, W), got {tuple(f.shape)}")
    if log_var is None:
        return f, None
    lv = torch.as_tensor(log_var)
    t, b, c, h, w = f.shape
    if tuple(lv.shape) not in ((t, b, 1, h, w), (t, b, c, h, w)):
        raise DataError(f"{where}: log_var {tuple(lv.shape)} does not fit logits {tuple(f.shape)}")
    return f, lv


def _check_batch(batch, k: int) -> tuple[Tensor, Tensor | None, Tensor]:
    where = f"calibration batch {k}"
    if not isinstance(batch, Mapping) or "logits" not in batch or "labels" not in batch:
        raise DataError(f"{where}: needs a dict with 'logits' and 'labels'")
    f, lv = _check_maps(batch["logits"], batch.get("log_var"), where)
    y = torch.as_tensor(batch["labels"])
    if tuple(y.shape) != (f.shape[1], *f.shape[3:]) or y.is_floating_point():
        raise DataError(f"{where}: labels {tuple(y.shape)} do not fit logits {tuple(f.shape)}")
    y = y.long().to(f.device)
    if ((y != IGNORE_INDEX) & ((y < 0) | (y >= f.shape[2]))).any():
        raise DataError(f"{where}: labels outside 0..{f.shape[2] - 1} (and not {IGNORE_INDEX})")
    return f, lv, y


def _prepare(batches: Sequence[Mapping], spatial: bool) -> tuple[list[_Image], int]:
    """Validated per-image float64 tensors and the class count."""
    if not batches:
        raise DataError("no calibration batches")
    images, classes = [], None
    for k, batch in enumerate(batches):
        f, lv, y = _check_batch(batch, k)
        if classes is not None and f.shape[2] != classes:
            raise DataError(f"calibration batch {k}: {f.shape[2]} classes, batch 0 has {classes}")
        classes = f.shape[2]
        for j in range(f.shape[1]):
            idx = (y[j].reshape(-1) != IGNORE_INDEX).nonzero()[:, 0]

            def flat(x: Tensor, idx=idx) -> Tensor:  # (T, K, H, W) -> (T, n, K) labelled pixels
                return x.flatten(2)[:, :, idx].transpose(1, 2).double()

            sv = None if lv is None else flat(torch.exp(0.5 * lv[:, j].double()))
            full = f[:, j].double() if spatial else None
            images.append(_Image(flat(f[:, j]), sv, y[j].reshape(-1)[idx], idx, full))
    if not sum(im.y.numel() for im in images):
        raise DataError("no labelled pixels in the calibration batches")
    return images, classes


def _objective(
    cal: Calibrator, images: list[_Image], noise_samples: int, seed: int, backward: bool = False
) -> float:
    """Mean NLL of the MC predictive (module docstring); with ``backward``, its gradient is
    accumulated into the calibrator's leaf parameters block by block."""
    total = sum(im.y.numel() for im in images)
    gen, value = None, 0.0
    for im in images:
        t, n, c = im.fv.shape
        noisy = noise_samples > 0 and im.sv is not None
        s = noise_samples if noisy else 1
        if n == 0:
            continue
        if cal.spatial:  # one τ map per dropout sample, shared by its noise draws
            scale = cal.scale_map(im.f).flatten(1)[:, im.idx].unsqueeze(-1)  # (T, n, 1)
            leaf = scale.detach().requires_grad_(backward)
        m = max(1, _BUDGET // (s * t * c))
        for lo in range(0, n, m):
            z = im.fv[None, :, lo : lo + m]  # (1, T, m, C)
            if noisy:
                if gen is None:
                    gen = torch.Generator(device=z.device).manual_seed(seed)
                shape = (s, 1, z.shape[2], c)
                eps = torch.randn(shape, generator=gen, dtype=z.dtype, device=z.device)
                z = z + im.sv[None, :, lo : lo + m] * eps
            if cal.spatial:
                out = z / leaf[None, :, lo : lo + m]
            else:
                out = cal(z.reshape(-1, c)).reshape(z.shape)
            y = im.y[lo : lo + m].view(1, 1, -1, 1).expand(s, t, -1, 1)
            log_p = torch.log_softmax(out, -1).gather(-1, y).reshape(s * t, -1)
            loss = (math.log(s * t) - torch.logsumexp(log_p, 0)).sum() / total
            if backward:
                loss.backward()
            value += float(loss.detach())
        if cal.spatial and backward and leaf.grad is not None:
            scale.backward(leaf.grad)
    return value


def _lbfgs(
    cls: type[Calibrator],
    classes: int,
    init: Mapping,
    images: list[_Image],
    noise_samples: int,
    seed: int,
    max_iter: int,
    penalty: Callable[[dict], Tensor] | None = None,
) -> Calibrator:
    """Minimise the objective (+ penalty) over the non-fixed params, positive ones in log space."""
    dev = images[0].fv.device
    init = {k: torch.as_tensor(v, dtype=torch.float64).to(dev) for k, v in init.items()}
    fixed = {k: v for k, v in init.items() if k in cls.fixed}
    free = {
        k: (v.log() if k in cls.positive else v).clone().requires_grad_()
        for k, v in init.items()
        if k not in cls.fixed
    }

    def params() -> dict[str, Tensor]:
        return {**fixed, **{k: u.exp() if k in cls.positive else u for k, u in free.items()}}

    opt = torch.optim.LBFGS(
        list(free.values()),
        lr=1.0,
        max_iter=max_iter,
        max_eval=max_iter * 5 // 4,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        opt.zero_grad()
        p = params()
        # Detached leaves: every pixel block back-propagates into them on its own; one final
        # backward carries their gradients through the log-space parametrisation.
        leaves = {k: v.detach().requires_grad_(k in free) for k, v in p.items()}
        cal = cls(classes, leaves)
        value = _objective(cal, images, noise_samples, seed, backward=True)
        if penalty is not None:
            reg = penalty(cal.params)
            reg.backward()
            value += float(reg.detach())
        pairs = [(p[k], leaves[k].grad) for k in free if leaves[k].grad is not None]
        if pairs:
            torch.autograd.backward([a for a, _ in pairs], [g for _, g in pairs])
        return torch.tensor(value, dtype=torch.float64)

    opt.step(closure)
    try:
        return cls(classes, {k: v.detach().cpu() for k, v in params().items()})
    except ValueError as e:
        raise SeguncertError(f"{cls.kind} calibrator fit diverged: {e}") from None


def _dirichlet(classes, images, class_weights, noise_samples, seed, max_iter, opts):
    lam, mu = float(opts["odir_lambda"]), float(opts["odir_mu"])

    def odir(p: dict) -> Tensor:
        w = p["W"]
        off = w - torch.diag(w.diagonal())
        return lam * off.square().sum() / (classes * (classes - 1)) + mu * p["b"].square().mean()

    return KINDS["dirichlet"].initial_params(classes), odir


def _logit_adjust(classes, images, class_weights, noise_samples, seed, max_iter, opts):
    if class_weights is None:
        raise ConfigError("logit_adjust needs class_weights (the training class weights w_c)")
    w = torch.as_tensor(class_weights, dtype=torch.float64)
    if w.shape != (classes,) or not (torch.isfinite(w) & (w > 0)).all():
        raise ConfigError(f"class_weights must be {classes} positive numbers, got {w.tolist()}")
    return {"class_weights": w, "tau_w": 1.0, "tau": 1.0}, None


def _local(classes, images, class_weights, noise_samples, seed, max_iter, opts):
    tau = opts["init_temperature"]
    if tau is None:
        init = KINDS["temperature"].initial_params(classes)
        glob = _lbfgs(KINDS["temperature"], classes, init, images, noise_samples, seed, max_iter)
        tau = float(glob.params["tau"])
    init = LocalTemperature.initial_params(classes, float(tau), int(opts["hidden"]), seed)
    wd = float(opts["weight_decay"])
    return init, lambda p: wd * (p["w1"].square().sum() + p["w2"].square().sum())


def _plain(classes, images, class_weights, noise_samples, seed, max_iter, opts):
    return None, None


# kind -> (initial params or None for the neutral ones, penalty or None)
_SETUP = {k: _plain for k in KINDS} | {
    "dirichlet": _dirichlet,
    "logit_adjust": _logit_adjust,
    "local_temperature": _local,
}


def fit_calibrator(
    kind: str,
    batches: list[dict],
    class_weights: Sequence[float] | None = None,
    noise_samples: int = 0,
    seed: int = 0,
    max_iter: int = 200,
    **options,
) -> Calibrator:
    """Fit a calibrator of ``kind`` by the MC-predictive NLL (module docstring). ``class_weights``
    (C,) is used (and required) by ``logit_adjust`` only; ``max_iter`` bounds the L-BFGS
    iterations; ``options`` are the kind's documented extras."""
    if kind not in KINDS:
        raise ConfigError(f"unknown calibrator kind {kind!r} (known: {', '.join(KINDS)})")
    known = _OPTIONS.get(kind, {})
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(
            f"calibrator {kind}: unknown option(s) {', '.join(unknown)} "
            f"(known: {', '.join(known) or 'none'})"
        )
    if int(noise_samples) < 0 or int(max_iter) < 1:
        raise ConfigError(
            f"need noise_samples >= 0 and max_iter >= 1, got {noise_samples}, {max_iter}"
        )
    cls = KINDS[kind]
    images, classes = _prepare(batches, cls.spatial)
    opts = {**known, **options}
    init, penalty = _SETUP[kind](
        classes, images, class_weights, int(noise_samples), seed, int(max_iter), opts
    )
    if init is None:
        init = cls.initial_params(classes)
    if not init:
        return cls(classes)
    return _lbfgs(cls, classes, init, images, int(noise_samples), seed, int(max_iter), penalty)


def predictive_nll(
    calibrator: Calibrator, batches: list[dict], noise_samples: int = 0, seed: int = 0
) -> float:
    """Mean NLL (nats per labelled pixel) of the calibrated MC predictive: the fit's objective
    without penalty, with the same noise draws for the same seed (for held-out selection)."""
    images, classes = _prepare(batches, calibrator.spatial)
    if classes != calibrator.num_classes:
        raise DataError(f"calibrator for {calibrator.num_classes} classes, batches have {classes}")
    with torch.no_grad():
        return _objective(calibrator, images, int(noise_samples), seed)


def mc_predictive(
    calibrator: Calibrator,
    logits: Tensor,
    log_var: Tensor | None = None,
    noise_samples: int = 0,
    seed: int = 0,
) -> Tensor:
    """Calibrated MC predictive p̄ = mean_{t,s} softmax(cal(f_t + σ_t ε_s, base=f_t)): logits
    (T, B, C, H, W), log_var (T, B, 1|C, H, W) or None -> probs (B, C, H, W) in the logits'
    dtype and device, without gradients. ε_s (1, B, C, H, W) is shared by the T samples and drawn
    from ``seed`` in the order s = 1..S (not the same draws as the fit, which draws only at
    labelled pixels); memory: a few T x B x C x H x W tensors."""
    f, lv = _check_maps(logits, log_var, "mc_predictive")
    t, b, c, h, w = f.shape
    if c != calibrator.num_classes:
        raise DataError(f"calibrator for {calibrator.num_classes} classes, logits have {c}")
    noisy = noise_samples > 0 and lv is not None
    s = int(noise_samples) if noisy else 1
    with torch.no_grad():
        scale = None
        if calibrator.spatial:
            scale = calibrator.scale_map(f.reshape(t * b, c, h, w)).view(t, b, 1, h, w).to(f)
        sigma = torch.exp(0.5 * lv.to(f)) if noisy else None
        gen = torch.Generator(device=f.device).manual_seed(seed) if noisy else None
        total = torch.zeros((b, c, h, w), dtype=f.dtype, device=f.device)
        for _ in range(s):
            z = f
            if noisy:
                eps = torch.randn((1, b, c, h, w), generator=gen, dtype=f.dtype, device=f.device)
                z = f + sigma * eps
            out = z / scale if scale is not None else calibrator(z)
            total += torch.softmax(out, 2).sum(0)
    return total / (t * s)
