"""Multi-task weighting by learned homoscedastic task uncertainty (Kendall, Gal & Cipolla 2018).

With s_k = log σ_k² learned per task, the paper's terms are

- classification (scaled softmax): (1/σ²) L + log σ  =  exp(-s) L + ½ s;
- regression (Gaussian):          (1/(2σ²)) L + log σ  =  ½ exp(-s) L + ½ s.

Each has its minimum over s at exp(s) = L (times 2 for classification), so it is bounded only
when L > 0: a loss that can be negative sends s to minus infinity. Cross-entropy and L1 are
non-negative; a depth NLL with a learned per-pixel scale is not (it drops its constants, and the
Laplace NLL |r|/b + log b is negative wherever |r| and b are small). Such a task needs no σ_k at
all: its NLL already *is* (1/(2σ²))·L + log σ with a per-pixel σ whose bias is the task-level
one, so it enters the sum with weight 1 (kind ``likelihood``). s_k is also soft-clamped to
±:data:`LOG_VAR_LIMIT`, so even a loss that approaches 0 cannot drive it to infinity.
"""

from __future__ import annotations

import torch
from torch import nn

LOG_VAR_LIMIT = 10.0
# kind -> (weight on exp(-s) L, weight on s); "likelihood" has no s.
KINDS = {"classification": (1.0, 0.5), "regression": (0.5, 0.5), "likelihood": None}


class UncertaintyWeighting(nn.Module):
    """``UncertaintyWeighting({"seg": "classification", "depth": "likelihood"})(losses)``.

    ``tasks`` maps task name -> kind (see :data:`KINDS`); ``forward(losses)`` takes a dict with
    exactly these names and returns the weighted sum. ``mode="fixed"`` is the plain sum.
    Losses of ``classification`` / ``regression`` tasks must be >= 0 (ValueError otherwise).
    """

    def __init__(self, tasks: dict[str, str], mode: str = "learned"):
        super().__init__()
        if mode not in ("learned", "fixed"):
            raise ValueError(f"mode must be learned or fixed, got {mode!r}")
        bad = {k: v for k, v in tasks.items() if v not in KINDS}
        if bad:
            raise ValueError(f"task kinds must be one of {tuple(KINDS)}, got {bad}")
        self.tasks = dict(tasks)
        self.mode = mode
        self.weighted = [n for n, k in tasks.items() if KINDS[k] is not None and mode == "learned"]
        coef = [KINDS[tasks[n]] for n in self.weighted]
        self.register_buffer("coef", torch.tensor(coef).reshape(-1, 2), persistent=False)
        self.log_vars = nn.Parameter(torch.zeros(len(self.weighted))) if self.weighted else None

    def log_var_values(self) -> torch.Tensor:
        """The soft-clamped s_k of the weighted tasks."""
        return LOG_VAR_LIMIT * torch.tanh(self.log_vars / LOG_VAR_LIMIT)

    def forward(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        if set(losses) != set(self.tasks):
            raise KeyError(f"expected losses for {sorted(self.tasks)}, got {sorted(losses)}")
        plain = [losses[n].float() for n in self.tasks if n not in self.weighted]
        total = torch.stack(plain).sum() if plain else 0.0
        if not self.weighted:
            return total
        stacked = torch.stack([losses[n].float() for n in self.weighted])
        if bool((stacked.detach() < 0).any()):
            raise ValueError("a learned task weight needs a non-negative loss (see module doc)")
        s = self.log_var_values()
        return total + (self.coef[:, 0] * torch.exp(-s) * stacked + self.coef[:, 1] * s).sum()

    def log_var_dict(self) -> dict[str, float]:
        """Current s_k per weighted task (for logging); empty when nothing is learned."""
        if self.log_vars is None:
            return {}
        values = self.log_var_values().detach().cpu()
        return {n: float(v) for n, v in zip(self.weighted, values, strict=True)}
