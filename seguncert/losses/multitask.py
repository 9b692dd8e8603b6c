"""Multi-task weighting by learned homoscedastic task uncertainty (Kendall, Gal & Cipolla 2018)."""

from __future__ import annotations

import torch
from torch import nn

KINDS = ("classification", "regression")


class UncertaintyWeighting(nn.Module):
    """Combine task losses L_k with learned s_k = log σ_k²:

    classification task: exp(-s_k) L_k + s_k; regression task: ½ exp(-s_k) L_k + ½ s_k.
    ``mode="fixed"`` is the plain sum Σ_k L_k (no parameters).

    ``tasks`` maps task name -> "classification" | "regression"; ``forward(losses)`` takes a
    dict with exactly these names and returns a scalar.
    """

    def __init__(self, tasks: dict[str, str], mode: str = "learned"):
        super().__init__()
        if mode not in ("learned", "fixed"):
            raise ValueError(f"mode must be learned or fixed, got {mode!r}")
        bad = {k: v for k, v in tasks.items() if v not in KINDS}
        if bad:
            raise ValueError(f"task kinds must be one of {KINDS}, got {bad}")
        self.names = list(tasks)
        self.mode = mode
        # ½ for regression tasks (Gaussian likelihood), 1 for classification (scaled softmax).
        factor = [0.5 if tasks[n] == "regression" else 1.0 for n in self.names]
        self.register_buffer("factor", torch.tensor(factor), persistent=False)
        self.log_vars = nn.Parameter(torch.zeros(len(self.names))) if mode == "learned" else None

    def forward(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        if set(losses) != set(self.names):
            raise KeyError(f"expected losses for {self.names}, got {sorted(losses)}")
        stacked = torch.stack([losses[n].float() for n in self.names])
        if self.log_vars is None:
            return stacked.sum()
        s = self.log_vars
        return (self.factor * (torch.exp(-s) * stacked + s)).sum()

    def log_var_dict(self) -> dict[str, float]:
        """Current s_k per task (for logging); empty in fixed mode."""
        if self.log_vars is None:
            return {}
        return {n: float(v) for n, v in zip(self.names, self.log_vars.detach().cpu())}
