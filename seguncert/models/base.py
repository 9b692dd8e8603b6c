"""The staged-model contract behind the prefix/suffix split.

Every seguncert network is a list of *stages*; each stage maps a state dict to a state dict
(``{"x": tensor, "skips": [...], "indices": [...]}`` and so on, every tensor batch-first).
Only the stages from the first active dropout on differ between MC samples, so inference runs
``forward_prefix`` once per image and ``forward_suffix`` on the state replicated T times
(:func:`repeat_state`). ``forward(x) == forward_suffix(forward_prefix(x))`` always; the sampler
also lets the model precompute per-image parts of the suffix (:meth:`StagedModel.prepare_suffix`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn

State = dict


class MCDropout(nn.Dropout):
    """Element-wise dropout that MC sampling switches back on at test time.

    A distinct class so the sampler finds exactly the dropout layers that the Bayesian
    placement inserted (and not, say, dropout inside a third-party encoder).

    On the CPU the mask is ``rand < 1 - p`` rather than ``F.dropout``'s ``bernoulli_``: same
    distribution, about 2.5x cheaper to draw (on a 2-core CPU ``bernoulli_`` was ~10% of a
    U-Net training step with the decoder preset). CUDA keeps the fused kernel.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        keep = 1.0 - self.p
        return x * (torch.rand_like(x) < keep).to(x.dtype).mul_(1.0 / keep)


class ConcreteDropout(MCDropout):
    """MC dropout whose rate p is learned (Gal, Hron & Kendall 2017, "Concrete Dropout").

    ``p = sigmoid(p_logit)``, one 0-d parameter per layer (``param_groups`` puts it in the
    no-weight-decay group). While training with gradients on, the mask is the Concrete
    (relaxed Bernoulli) one, z = sigmoid((p_logit + log u − log(1−u)) / t), t = 0.1, and
    x ↦ x·(1 − z)/(1 − p), so the loss and the regulariser
    (:func:`seguncert.losses.concrete.concrete_regulariser`) reach p_logit. Anywhere else
    (MC sampling under ``torch.no_grad`` / ``inference_mode``, the seeded masks of
    :class:`~seguncert.uncertainty.masks.SeededDropout`, the matmul head) it is an ordinary
    :class:`MCDropout` at the learned rate: ``p`` reads as a float, so every sampler path sees
    the same hard Bernoulli masks. ``channels`` (the K of the regulariser) is recorded from the
    last training input.
    """

    temperature = 0.1
    eps = 1e-7

    def __init__(self, p: float):
        if not 0.0 < p < 1.0:
            raise ValueError(f"concrete dropout needs an initial rate in (0, 1), got {p!r}")
        super().__init__(p)
        self.channels = 0

    @property
    def p(self) -> float:
        return float(torch.sigmoid(self.p_logit.detach()))

    @p.setter
    def p(self, value: float) -> None:
        logit = math.log(value) - math.log1p(-value)
        if "p_logit" in self._parameters:
            with torch.no_grad():
                self.p_logit.fill_(logit)
        else:
            self.p_logit = nn.Parameter(torch.tensor(logit))

    def rate(self) -> torch.Tensor:
        """p as a 0-d tensor that carries the gradient."""
        return torch.sigmoid(self.p_logit)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled()):
            return super().forward(x)
        self.channels = int(x.shape[1])
        u = torch.rand_like(x, dtype=torch.float32)
        noise = torch.log(u + self.eps) - torch.log1p(self.eps - u)
        z = torch.sigmoid((self.p_logit + noise) / self.temperature)
        return (x * ((1.0 - z) / (1.0 - self.rate()))).to(x.dtype)


def has_active_dropout(module: nn.Module) -> bool:
    return any(isinstance(m, MCDropout) and m.p > 0 for m in module.modules())


def model_spec(arch: str, **fields) -> dict:
    """The JSON-able dict that :func:`seguncert.models.build.model_from_spec` rebuilds a model
    from: every field of ``ModelConfig`` that shapes the network, plus ``depth_dist``; fields an
    architecture does not use keep their defaults. Pretrained weights are never part of it
    (they come from the checkpoint: rebuilding must not download anything)."""
    from ..config import ModelConfig

    d = ModelConfig()
    spec = {
        "arch": arch,
        "task": fields.get("task", d.task),
        "encoder": fields.get("encoder", d.encoder),
        "encoder_weights": None,
        "num_classes": int(fields.get("num_classes", d.num_classes)),
        "dropout": fields.get("dropout", d.dropout),
        "dropout_p": float(fields.get("dropout_p", d.dropout_p)),
        "heteroscedastic": bool(fields.get("heteroscedastic", d.heteroscedastic)),
        "decoder_channels": [int(c) for c in fields.get("decoder_channels", d.decoder_channels)],
        "width": int(fields.get("width", d.width)),
        "depth_dist": fields.get("depth_dist", "laplace"),
        "concrete_dropout": bool(fields.get("concrete_dropout", d.concrete_dropout)),
    }
    return spec


class StagedModel(nn.Module):
    """Base class: subclasses fill ``self.stages`` and set ``self.spec`` (:func:`model_spec`),
    so any instance, however it was built, can be saved and rebuilt."""

    stages: nn.ModuleList
    spec: dict

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        state: State = {"x": x, "input_size": x.shape[-2:]}
        for stage in self.stages:
            state = stage(state)
        return self.outputs(state)

    def outputs(self, state: State) -> dict[str, torch.Tensor]:
        """The network outputs (``output_keys``) among a state's entries."""
        return {k: v for k, v in state.items() if k in self.output_keys}

    output_keys: tuple[str, ...] = ("logits", "logit_log_var", "depth_loc", "depth_log_scale")

    @property
    def split_index(self) -> int:
        """Index of the first stage holding an active MC dropout (len(stages) when none)."""
        for i, stage in enumerate(self.stages):
            if has_active_dropout(stage):
                return i
        return len(self.stages)

    def forward_prefix(self, x: torch.Tensor) -> State:
        """The deterministic part: every stage before the first active dropout."""
        state: State = {"x": x, "input_size": x.shape[-2:]}
        for stage in self.stages[: self.split_index]:
            state = stage(state)
        return state

    def prepare_suffix(self, state: State) -> State:
        """Per-image work of the suffix that no MC sample changes, done once before the state
        is replicated (``MCSampler`` calls it; this default does nothing). An override may
        replace entries by precomputed ones and list them in ``state["shared"]`` so that
        :func:`repeat_state` leaves them at batch B; it must keep
        ``forward_suffix(repeat_state(prepare_suffix(s), n))`` equal, to float rounding and
        with the same dropout masks, to ``forward_suffix(repeat_state(s, n))``. Only for
        inference: the prepared stages may fold eval-mode BatchNorm into the convolutions."""
        return state

    def forward_suffix(self, state: State) -> dict[str, torch.Tensor]:
        """The stochastic rest, on a (possibly replicated) prefix state."""
        return self.outputs(self.run_stages(state, self.split_index))

    def run_stages(self, state: State, start: int, stop: int | None = None) -> State:
        """The raw state after stages[start:stop] (e.g. the head's input, for a sampler that
        computes the head itself)."""
        for stage in self.stages[start:stop]:
            state = stage(state)
        return state


def repeat_state(state: State, n: int) -> State:
    """Replicate every batch-first tensor of ``state`` n times: batch B becomes n*B, sample-major
    (rows [k*B:(k+1)*B] are sample k). Views via expand where possible; one copy per tensor.

    Entries named in ``state["shared"]`` (see :meth:`StagedModel.prepare_suffix`) stay at
    batch B: they are the same for every sample, and the stages broadcast them."""
    shared = {"input_size", "shared", *state.get("shared", ())}

    def rep(v):
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            return v.unsqueeze(0).expand(n, *v.shape).reshape(n * v.shape[0], *v.shape[1:])
        if isinstance(v, (list, tuple)):
            return type(v)(rep(t) for t in v)
        return v

    return {k: (v if k in shared else rep(v)) for k, v in state.items()}


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Every module in eval mode (BatchNorm running stats, dropout off); restores each module's
    previous ``training`` flag on exit."""
    previous = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for m, flag in previous.items():
            m.training = flag


@contextlib.contextmanager
def mc_dropout_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode everywhere (BatchNorm uses running stats) except MCDropout layers, which sample.

    Restores each module's previous ``training`` flag on exit.
    """
    with eval_mode(model):
        for m in model.modules():
            if isinstance(m, MCDropout):
                m.train()
        yield model
