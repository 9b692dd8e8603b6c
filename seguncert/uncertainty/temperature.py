"""Temperature scaling (Guo et al., ICML 2017), fitted exactly on any number of pixels.

p = softmax(logits / T); T* minimises the mean NLL of the labelled pixels of a validation split.
The NLL is convex in the *inverse* temperature β = 1/T (a log-sum-exp of functions linear in β,
minus a linear term), also per class (β a C-vector scaling each logit). So the fit is a damped
Newton method on β with an Armijo backtracking line search, T kept in [0.05, 20]: every step
needs the exact mean loss, gradient and C x C Hessian over all pixels, which are sums over pixels,
so each is accumulated in one streaming pass over the batches (float64, blocks of 65536 pixels).
No pixel is subsampled and no (N, C) tensor of all pixels is built; memory is one batch. Scalar
fits converge in ~4-8 passes, per-class fits in ~6-12.

API for the evaluation tool::

    T = fit_temperature_streaming(batch_fn, num_classes, per_class=False)

``batch_fn()`` must return a *fresh* iterable of ``(logits, labels)`` each time it is called
(it is called once per pass): logits (B, C, H, W) or (N, C) float (any device; moved to CPU),
labels (B, H, W) or (N,) int with ``ignore_index`` for unlabelled pixels. Returns a float, or a
(C,) float32 tensor when ``per_class``. ``fit_temperature`` takes tensors or a list of batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from ..data.common import IGNORE_INDEX
from ..errors import DataError

T_MIN, T_MAX = 0.05, 20.0
_BLOCK = 1 << 16


def apply_temperature(logits: torch.Tensor, temperature: float | torch.Tensor) -> torch.Tensor:
    """logits (B, C, ...) divided by T: a number or a (C,) tensor (per class, along dim 1)."""
    if isinstance(temperature, torch.Tensor) and temperature.numel() > 1:
        shape = (1, -1) + (1,) * (logits.dim() - 2)
        return logits / temperature.to(logits.device, logits.dtype).view(shape)
    return logits / float(temperature)


def _pixels(logits, labels, num_classes: int, ignore_index: int):
    """(N, C) float logits and (N,) long labels of the labelled pixels, on CPU."""
    if logits.dim() == 4:
        z = logits.detach().permute(0, 2, 3, 1).reshape(-1, logits.shape[1])
    elif logits.dim() == 2:
        z = logits.detach()
    else:
        raise DataError(f"logits must be (B, C, H, W) or (N, C), got {tuple(logits.shape)}")
    y = torch.as_tensor(labels).reshape(-1).long().cpu()
    if z.shape[1] != num_classes or z.shape[0] != y.numel():
        raise DataError(
            f"logits {tuple(logits.shape)} do not match labels {tuple(labels.shape)} "
            f"with {num_classes} classes"
        )
    keep = y != ignore_index
    z, y = z.cpu()[keep], y[keep]
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise DataError(f"labels outside 0..{num_classes - 1} (and not {ignore_index})")
    return z, y


def _pass(batch_fn, beta: torch.Tensor, num_classes: int, ignore_index: int):
    """Mean NLL, gradient (C,) and Hessian (C, C) w.r.t. per-class inverse temperatures."""
    c = num_classes
    loss = torch.zeros((), dtype=torch.float64)
    grad = torch.zeros(c, dtype=torch.float64)
    hess = torch.zeros(c, c, dtype=torch.float64)
    n = 0
    for logits, labels in batch_fn():
        z_all, y_all = _pixels(logits, labels, c, ignore_index)
        for i in range(0, y_all.numel(), _BLOCK):
            z, y = z_all[i : i + _BLOCK].double(), y_all[i : i + _BLOCK]
            s = z * beta
            log_p = torch.log_softmax(s, 1)
            loss -= log_p.gather(1, y[:, None]).sum()
            a = log_p.exp() * z  # p_c z_c
            grad += a.sum(0)
            grad.index_add_(0, y, -z.gather(1, y[:, None])[:, 0])
            hess += torch.diag((a * z).sum(0)) - a.T @ a
            n += y.numel()
    if n == 0:
        raise DataError("no labelled pixels to fit the temperature on")
    return loss / n, grad / n, hess / n


def fit_temperature_streaming(
    batch_fn: Callable[[], Iterable],
    num_classes: int,
    per_class: bool = False,
    ignore_index: int = IGNORE_INDEX,
    max_iter: int = 100,
    tol: float = 1e-10,
) -> float | torch.Tensor:
    """T* minimising the mean NLL over every labelled pixel that ``batch_fn()`` yields (see the
    module docstring). ``max_iter`` bounds the Newton steps; ``tol`` is the stopping Newton
    decrement (nats per pixel)."""
    dim = num_classes if per_class else 1
    lo, hi = 1.0 / T_MAX, 1.0 / T_MIN
    beta = torch.ones(dim, dtype=torch.float64)

    def evaluate(b):
        loss, g, h = _pass(batch_fn, b.expand(num_classes), num_classes, ignore_index)
        # Scalar β scales every class: chain rule sums the per-class gradient and Hessian.
        return (loss, g, h) if per_class else (loss, g.sum().view(1), h.sum().view(1, 1))

    loss, g, h = evaluate(beta)
    for _ in range(max_iter):
        ridge = 1e-12 * float(h.diagonal().abs().max()) + 1e-300
        step = -torch.linalg.solve(h + ridge * torch.eye(dim, dtype=h.dtype), g)
        if float(-(g @ step)) < 2 * tol:
            break
        t, moved = 1.0, False
        while t > 1e-6:
            cand = (beta + t * step).clamp(lo, hi)
            if torch.equal(cand, beta):
                break  # pushing against the T range: nothing left to gain inside it
            loss2, g2, h2 = evaluate(cand)
            if float(loss2) <= float(loss) + 1e-4 * float(g @ (cand - beta)):
                beta, loss, g, h, moved = cand, loss2, g2, h2, True
                break
            t *= 0.5
        if not moved:
            break
    temperature = (1.0 / beta).float()
    return temperature if per_class else float(temperature[0])


def fit_temperature(
    logits: torch.Tensor | Iterable,
    labels: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    per_class: bool = False,
    max_iter: int = 100,
) -> float | torch.Tensor:
    """Exact NLL-optimal temperature for logits (B, C, H, W) / (N, C) and labels, or for an
    iterable of (logits, labels) batches (labels=None; a generator is read once into a list)."""
    batches = [(logits, labels)] if labels is not None else list(logits)
    if not batches:
        raise DataError("no batches to fit the temperature on")
    num_classes = batches[0][0].shape[1]
    return fit_temperature_streaming(
        lambda: batches, num_classes, per_class, ignore_index, max_iter=max_iter
    )


def nll(
    logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float | torch.Tensor = 1.0,
    ignore_index: int = IGNORE_INDEX,
) -> float:
    """Mean negative log-likelihood (nats) of the labelled pixels under softmax(logits / T)."""
    z, y = _pixels(apply_temperature(logits, temperature), labels, logits.shape[1], ignore_index)
    if y.numel() == 0:
        raise DataError("no labelled pixels to compute the NLL on")
    return float(-torch.log_softmax(z.double(), 1).gather(1, y[:, None]).mean())
