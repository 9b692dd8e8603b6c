"""Post-hoc calibrators for segmentation logits, applied to each MC sample before averaging.

A calibrator maps logits z (..., C, H, W) or (N, C) to calibrated logits of the same shape; on
the MC predictive it acts on every sample's (noisy) logits, p̄ = mean_{t,s} softmax(cal(z_ts)),
and is fitted by the NLL of that predictive (:mod:`.calibrator_fit`). Kinds (``KINDS``):

- ``identity``: cal(z) = z.
- ``temperature`` (Guo et al. 2017): z / τ, τ > 0.
- ``class_temperature``: z_c / τ_c, τ ∈ R^C_{>0}.
- ``vector`` (vector scaling): a ⊙ z + b, a, b ∈ R^C.
- ``dirichlet`` (Kull et al. 2019): W · log_softmax(z) + b, W ∈ R^{CxC}, b ∈ R^C, fitted with the
  ODIR penalty λ ||offdiag(W)||² / (C(C-1)) + μ ||b||² / C. W = I, b = 0 is the identity.
- ``logit_adjust`` (Menon et al. 2021): (z_c − τ_w log w_c) / τ with the training class weights
  w_c (stored, not fitted). A model trained with class weights estimates p_w(c|x) ∝ w_c p(c|x),
  so τ_w = 1, τ = 1 is the textbook prior correction; τ_w and τ are fitted jointly.
- ``local_temperature`` (Ding et al. 2021, simplified): z / τ(x), with a per-pixel
  τ(x) = τ_min + softplus(conv3x3(tanh(conv3x3(φ)))), φ = [softmax(base), H(softmax(base)) /
  log C] (C + 1 channels in [0, 1], replicate padding, ``hidden`` channels in between; bounded
  inputs generalise better from a calibration split than raw logits or log-probabilities).
  ``base`` is the sample's noise-free logits f_t, so all noise draws of one dropout sample share
  the same τ map; it defaults to z itself. Needs the spatial layout: (N, C) input is refused.

Per sample, ``temperature``, ``local_temperature`` and ``identity`` keep the argmax
(``preserves_argmax``); the per-class kinds (``class_temperature``, ``vector``, ``dirichlet``,
``logit_adjust``) can change it. The argmax of the MC mean p̄ can still move slightly under any
non-identity calibrator, since sharpening or softening changes how much each sample weighs.

Parameters are float64 tensors in ``params`` (cast to the logits' dtype and device on use);
``to_dict`` writes them as nested lists of floats, which JSON round-trips exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from ..errors import CheckpointError, DataError, one_line
from .temperature import T_MIN

Tensor = torch.Tensor

FORMAT = "seguncert.calibrator"
VERSION = 1
TASK = "segmentation"
HIDDEN = 16


def _class_dim(z: Tensor, num_classes: int) -> int:
    """Class dim of (N, C) (1) or (..., C, H, W) (-3, as a positive index)."""
    if z.dim() < 2:
        raise DataError(f"calibrator needs (N, C) or (..., C, H, W) logits, got {tuple(z.shape)}")
    cdim = 1 if z.dim() == 2 else z.dim() - 3
    if z.shape[cdim] != num_classes:
        raise DataError(
            f"calibrator for {num_classes} classes got logits of shape {tuple(z.shape)}"
        )
    return cdim


def _per_class(v: Tensor, z: Tensor, cdim: int) -> Tensor:
    """A (C,) parameter shaped to broadcast along the class dim of z."""
    return v.to(z.device, z.dtype).view((-1,) + (1,) * (z.dim() - 1 - cdim))


def _coerce(name: str, value, shape: tuple[int, ...], positive: bool) -> Tensor:
    """value as a float64 tensor of ``shape`` (tensors keep their autograd graph)."""
    t = value if isinstance(value, Tensor) else torch.tensor(value, dtype=torch.float64)
    t = t.to(torch.float64)
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {shape}")
    if not torch.isfinite(t.detach()).all():
        raise ValueError(f"{name} is not finite")
    if positive and not (t.detach() > 0).all():
        raise ValueError(f"{name} must be > 0")
    return t


def _f64(x) -> Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


class Calibrator:
    """Base class and the ``identity`` kind. Subclasses declare their parameter shapes, the
    neutral initial values, which are positive (fitted in log space) and which are fixed."""

    kind = "identity"
    preserves_argmax = True
    spatial = False  # True: cal(z, base) = z / scale_map(base), a per-pixel map
    positive: tuple[str, ...] = ()
    fixed: tuple[str, ...] = ()

    def __init__(self, num_classes: int, params: Mapping | None = None) -> None:
        if int(num_classes) < 2:
            raise ValueError(f"a calibrator needs at least 2 classes, got {num_classes}")
        self.num_classes = int(num_classes)
        raw = self.initial_params(self.num_classes) if params is None else dict(params)
        shapes = self.shapes(self.num_classes, raw)
        if set(raw) != set(shapes):
            raise ValueError(f"params must be {sorted(shapes)}, got {sorted(raw)}")
        self.params = {k: _coerce(k, raw[k], s, k in self.positive) for k, s in shapes.items()}

    @classmethod
    def shapes(cls, num_classes: int, params: Mapping) -> dict[str, tuple[int, ...]]:
        """Expected shape of every parameter (by default those of the initial ones)."""
        return {k: tuple(v.shape) for k, v in cls.initial_params(num_classes).items()}

    @classmethod
    def initial_params(cls, num_classes: int) -> dict[str, Tensor]:
        """Parameters that make the calibrator the identity (the start of a fit)."""
        return {}

    def _p(self, name: str, z: Tensor) -> Tensor:
        return self.params[name].to(z.device, z.dtype)

    def __call__(self, z: Tensor, base: Tensor | None = None) -> Tensor:
        cdim = _class_dim(z, self.num_classes)
        if base is not None and base.shape != z.shape:
            raise DataError(f"calibrator base {tuple(base.shape)} differs from z {tuple(z.shape)}")
        return self._apply(z, z if base is None else base, cdim)

    def _apply(self, z: Tensor, base: Tensor, cdim: int) -> Tensor:
        return z

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "kind": self.kind,
            "task": TASK,
            "num_classes": self.num_classes,
            "params": {k: v.detach().cpu().tolist() for k, v in self.params.items()},
        }

    def describe(self) -> str:
        return "identity (uncalibrated)"

    def __repr__(self) -> str:
        return f"<calibrator {self.describe()}>"


def _range(v: Tensor) -> str:
    return f"[{float(v.min()):.3g}, {float(v.max()):.3g}]"


class Temperature(Calibrator):
    kind = "temperature"
    positive = ("tau",)

    @classmethod
    def initial_params(cls, num_classes):
        return {"tau": _f64(1.0)}

    def _apply(self, z, base, cdim):
        return z / self._p("tau", z)

    def describe(self):
        return f"temperature tau={float(self.params['tau']):.4g}"


class ClassTemperature(Calibrator):
    kind = "class_temperature"
    preserves_argmax = False
    positive = ("tau",)

    @classmethod
    def initial_params(cls, num_classes):
        return {"tau": torch.ones(num_classes, dtype=torch.float64)}

    def _apply(self, z, base, cdim):
        return z / _per_class(self.params["tau"], z, cdim)

    def describe(self):
        return f"class_temperature tau_c in {_range(self.params['tau'])}"


class Vector(Calibrator):
    kind = "vector"
    preserves_argmax = False

    @classmethod
    def initial_params(cls, num_classes):
        one = torch.ones(num_classes, dtype=torch.float64)
        return {"a": one, "b": torch.zeros_like(one)}

    def _apply(self, z, base, cdim):
        return _per_class(self.params["a"], z, cdim) * z + _per_class(self.params["b"], z, cdim)

    def describe(self):
        return f"vector a in {_range(self.params['a'])}, b in {_range(self.params['b'])}"


class Dirichlet(Calibrator):
    kind = "dirichlet"
    preserves_argmax = False

    @classmethod
    def initial_params(cls, num_classes):
        eye = torch.eye(num_classes, dtype=torch.float64)
        return {"W": eye, "b": torch.zeros(num_classes, dtype=torch.float64)}

    def _apply(self, z, base, cdim):
        log_p = torch.log_softmax(z, cdim).movedim(cdim, -1)
        out = log_p @ self._p("W", z).T + self._p("b", z)
        return out.movedim(-1, cdim)

    def describe(self):
        w = self.params["W"]
        off = w - torch.diag(w.diagonal())
        rms = float(off.square().mean().sqrt()) if self.num_classes > 1 else 0.0
        return f"dirichlet diag(W) in {_range(w.diagonal())}, offdiag rms {rms:.3g}"


class LogitAdjust(Calibrator):
    kind = "logit_adjust"
    preserves_argmax = False
    positive = ("class_weights", "tau")
    fixed = ("class_weights",)

    @classmethod
    def initial_params(cls, num_classes):
        w = torch.ones(num_classes, dtype=torch.float64)
        return {"class_weights": w, "tau_w": _f64(1.0), "tau": _f64(1.0)}

    def _apply(self, z, base, cdim):
        log_w = _per_class(self.params["class_weights"].log(), z, cdim)
        return (z - self._p("tau_w", z) * log_w) / self._p("tau", z)

    def describe(self):
        p = self.params
        return f"logit_adjust tau_w={float(p['tau_w']):.4g}, tau={float(p['tau']):.4g}"


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class LocalTemperature(Calibrator):
    kind = "local_temperature"
    spatial = True

    @classmethod
    def shapes(cls, num_classes, params):
        h = len(params["b1"]) if "b1" in params else HIDDEN
        return {"w1": (h, num_classes + 1, 3, 3), "b1": (h,), "w2": (1, h, 3, 3), "b2": (1,)}

    @classmethod
    def initial_params(
        cls, num_classes: int, temperature: float = 1.0, hidden: int = HIDDEN, seed: int = 0
    ) -> dict[str, Tensor]:
        """τ(x) ≡ ``temperature`` everywhere: zero output weights, random hidden weights (so
        the output weights get a gradient at the start)."""
        if not temperature > T_MIN:
            raise ValueError(f"local_temperature needs an initial temperature > {T_MIN}")
        g = torch.Generator().manual_seed(seed)
        fan_in = 9 * (num_classes + 1)
        w1 = torch.randn(hidden, num_classes + 1, 3, 3, generator=g, dtype=torch.float64)
        return {
            "w1": w1 / math.sqrt(fan_in),
            "b1": torch.zeros(hidden, dtype=torch.float64),
            "w2": torch.zeros(1, hidden, 3, 3, dtype=torch.float64),
            "b2": _f64([_inverse_softplus(temperature - T_MIN)]),
        }

    def scale_map(self, base: Tensor) -> Tensor:
        """Per-pixel temperature τ(x) > τ_min: base logits (N, C, H, W) -> (N, 1, H, W)."""
        p = torch.softmax(base, 1)
        entropy = -torch.xlogy(p, p).sum(1, keepdim=True) / math.log(self.num_classes)
        x = torch.cat([p, entropy], 1)
        x = torch.tanh(F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), *self._net(base, 1)))
        x = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), *self._net(base, 2))
        return T_MIN + F.softplus(x)

    def _net(self, ref: Tensor, layer: int) -> tuple[Tensor, Tensor]:
        return self._p(f"w{layer}", ref), self._p(f"b{layer}", ref)

    def _apply(self, z, base, cdim):
        if z.dim() < 3:
            raise DataError(
                f"local_temperature needs logit maps (..., C, H, W), got {tuple(z.shape)}"
            )
        lead, (c, h, w) = base.shape[:-3], base.shape[-3:]
        scale = self.scale_map(base.reshape(-1, c, h, w)).reshape(*lead, 1, h, w)
        return z / scale.to(z.dtype)

    def describe(self):
        return f"local_temperature (3x3 conv net, {len(self.params['b1'])} hidden channels)"


KINDS: dict[str, type[Calibrator]] = {
    c.kind: c
    for c in (
        Calibrator,
        Temperature,
        ClassTemperature,
        Vector,
        Dirichlet,
        LogitAdjust,
        LocalTemperature,
    )
}


def calibrator_from_dict(d: dict, num_classes: int, task: str = TASK) -> Calibrator:
    """Rebuild a calibrator written by ``to_dict``, refusing (one-line CheckpointError) another
    format version, task or class count, an unknown kind or malformed params."""
    if not isinstance(d, Mapping):
        raise CheckpointError(f"calibrator: expected a dict, got {type(d).__name__}")
    if d.get("format") != FORMAT or d.get("version") != VERSION:
        raise CheckpointError(
            f"calibrator: unsupported format {d.get('format')!r} version {d.get('version')!r} "
            f"(expected {FORMAT!r} version {VERSION})"
        )
    if d.get("task") != task or task != TASK:
        raise CheckpointError(f"calibrator is for task {d.get('task')!r}, the model's is {task!r}")
    if d.get("num_classes") != num_classes:
        raise CheckpointError(
            f"calibrator is for {d.get('num_classes')!r} classes, the model has {num_classes}"
        )
    kind = d.get("kind")
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise CheckpointError(f"unknown calibrator kind {kind!r} (known: {', '.join(KINDS)})")
    params = d.get("params")
    if not isinstance(params, Mapping):
        raise CheckpointError(f"calibrator {kind}: params must be a dict, got {params!r:.60}")
    try:
        return cls(num_classes, params)
    except (TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(one_line(f"calibrator {kind}: malformed params: {e}")) from None
