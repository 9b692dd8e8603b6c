"""Streaming metric base and the histogram helpers shared by the metric modules.

A streaming metric keeps only fixed-size sums (int64 counts, float64 sums) in ``self.state``.
Its value over a whole split is a function of those sums, so

- memory is constant however many pixels go through ``update``,
- two metrics that saw disjoint data combine by adding their states (``merge``), and under
  DDP by one SUM all-reduce per state tensor (``all_reduce``), exactly as if one process
  had seen everything.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist

from ..errors import DataError

CHUNK_PIXELS = 1 << 18  # pixels per chunk: bounds the temporaries of one update (~tens of MB)


class StreamingMetric:
    """Base for metrics whose state is a dict of fixed-size sum tensors.

    Subclasses call :meth:`_add_state` in ``__init__`` and implement ``update`` and
    ``compute``. ``self.config`` (JSON-able) identifies the binning/settings: only metrics
    with equal config and state shapes can be merged or loaded.
    """

    def __init__(self, config: dict) -> None:
        self.config = dict(config)
        self.state: dict[str, torch.Tensor] = {}

    def _add_state(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        if dtype not in (torch.int64, torch.float64):
            raise TypeError(f"state {name!r}: only int64 counts and float64 sums add exactly")
        self.state[name] = torch.zeros(shape, dtype=dtype)

    @property
    def device(self) -> torch.device:
        return next(iter(self.state.values())).device

    def _follow(self, x: torch.Tensor) -> None:
        """Keep the state on the device of the incoming data (sums happen there)."""
        if x.device != self.device:
            self.state = {k: v.to(x.device) for k, v in self.state.items()}

    # -- mergeable state -------------------------------------------------------------------
    def state_tensors(self) -> list[torch.Tensor]:
        """State tensors in a fixed order (sorted names), identical on every process."""
        return [self.state[k] for k in sorted(self.state)]

    def reset(self) -> None:
        for v in self.state.values():
            v.zero_()

    def _check_compatible(self, other: StreamingMetric, what: str) -> None:
        if type(other) is not type(self) or other.config != self.config:
            raise ValueError(
                f"cannot {what} {type(other).__name__}{other.config} "
                f"into {type(self).__name__}{self.config}"
            )

    def merge(self, other: StreamingMetric) -> StreamingMetric:
        """Add ``other``'s sums to this metric (both must have the same config); returns self."""
        self._check_compatible(other, "merge")
        for k, v in self.state.items():
            v += other.state[k].to(v.device)
        return self

    def all_reduce(self) -> None:
        """SUM every state tensor over the process group; a no-op without torch.distributed.

        NCCL only reduces CUDA tensors, so CPU state makes a round trip to the current GPU.
        """
        if not (dist.is_available() and dist.is_initialized()):
            return
        nccl = dist.get_backend() == "nccl"
        for k in sorted(self.state):
            t = self.state[k]
            if nccl and t.device.type != "cuda":
                g = t.to(torch.device("cuda", torch.cuda.current_device()))
                dist.all_reduce(g, op=dist.ReduceOp.SUM)
                t.copy_(g.cpu())
            else:
                dist.all_reduce(t, op=dist.ReduceOp.SUM)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.state.items()}

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        if set(sd) != set(self.state):
            raise ValueError(f"state keys {sorted(sd)} != expected {sorted(self.state)}")
        for k, v in self.state.items():
            if tuple(sd[k].shape) != tuple(v.shape):
                raise ValueError(f"state {k!r}: shape {tuple(sd[k].shape)} != {tuple(v.shape)}")
            v.copy_(sd[k].to(device=v.device, dtype=v.dtype))

    def update(self, *args, **kwargs) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def compute(self) -> dict:  # pragma: no cover - interface
        raise NotImplementedError


# -- input checks ---------------------------------------------------------------------------
def check_same_shape(**tensors: torch.Tensor) -> None:
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"shape mismatch: {shapes}")


def check_finite(name: str, x: torch.Tensor) -> None:
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise DataError(f"{name} contains NaN or inf values")


def row_chunks(h: int, w: int, chunk_pixels: int = CHUNK_PIXELS) -> Iterator[slice]:
    """Row slices of an (H, W) image holding about ``chunk_pixels`` pixels each."""
    rows = max(1, chunk_pixels // max(1, w))
    for r0 in range(0, h, rows):
        yield slice(r0, min(h, r0 + rows))


# -- binning ----------------------------------------------------------------------------------
class Binning:
    """Maps values to ``n_bins`` bins; bin b is ``[edges[b], edges[b+1])``, values outside the
    range are clamped into the end bins.

    - ``value_range=(lo, hi)``: equal-width edges on [lo, hi].
    - ``value_range=None``: for unbounded non-negative maps (a learned variance): values are
      squashed by ``u / (1 + u)`` (negative ones clamped to 0) into [0, 1) before equal-width
      binning. The squash is monotonic, so rank metrics (AUROC, AUPR, AURC, sparsification)
      are unaffected; ``edges`` are reported back in the original units (last one = inf).
    - ``log=True`` with a positive range: log-spaced edges (errors spanning many decades).
    """

    def __init__(self, n_bins: int, value_range: tuple[float, float] | None, log: bool = False):
        if n_bins < 1:
            raise ValueError(f"n_bins must be >= 1, got {n_bins}")
        self.n_bins = int(n_bins)
        self.squash = value_range is None
        lo, hi = (
            (0.0, 1.0) if value_range is None else (float(value_range[0]), float(value_range[1]))
        )
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise ValueError(f"bad value range ({lo}, {hi}): need finite lo < hi")
        if log and lo <= 0:
            raise ValueError(f"log binning needs a positive range, got ({lo}, {hi})")
        self.range = (lo, hi)
        self.log = log
        if log:
            self._edges = torch.logspace(
                math.log10(lo), math.log10(hi), n_bins + 1, dtype=torch.float64
            )
        else:
            self._edges = torch.linspace(lo, hi, n_bins + 1, dtype=torch.float64)

    def index(self, x: torch.Tensor) -> torch.Tensor:
        """Bin index (int64, same shape) of each value of ``x``."""
        x = x.to(torch.float64)
        if self.squash:
            x = x.clamp_min(0.0)
            x = x / (1.0 + x)
        edges = self._edges.to(x.device)
        idx = torch.bucketize(x, edges, right=True) - 1
        return idx.clamp_(0, self.n_bins - 1)

    def edges(self) -> np.ndarray:
        """Bin edges in the units of the input values (float64, n_bins + 1)."""
        e = self._edges.numpy().copy()
        if self.squash:
            with np.errstate(divide="ignore"):
                e = e / (1.0 - e)
        return e

    def describe(self) -> dict:
        return {
            "n_bins": self.n_bins,
            "range": None if self.squash else list(self.range),
            "log": self.log,
        }


# -- pure histogram maths (numpy float64, used by compute) --------------------------------------
def kept_sums(counts: np.ndarray, sums: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Sum of a per-pixel quantity over the ``kept`` lowest-bin pixels.

    counts, sums: (n_bins,) per bin, ordered from the pixels kept first; kept: (K,) numbers of
    pixels to keep (real-valued). The boundary bin contributes pro rata, i.e. the expected
    value when the pixels within a bin are in random order. Returns (K,).
    """
    counts = np.asarray(counts, np.float64)
    sums = np.asarray(sums, np.float64)
    kept = np.clip(np.asarray(kept, np.float64), 0.0, counts.sum())
    cum_n = np.concatenate([[0.0], np.cumsum(counts)])
    cum_s = np.concatenate([[0.0], np.cumsum(sums)])
    # first bin j whose end reaches `kept` (empty bins are skipped since cum_n does not grow)
    j = np.clip(np.searchsorted(cum_n[1:], kept, side="left"), 0, len(counts) - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(counts[j] > 0, (kept - cum_n[j]) / counts[j], 0.0)
    return cum_s[j] + np.clip(frac, 0.0, 1.0) * sums[j]


def bincount2d(idx: torch.Tensor, rows: int, cols: int, weights: torch.Tensor | None = None):
    """Histogram of flat indices into a (rows, cols) table (int64 counts or float64 sums)."""
    w = None if weights is None else weights.to(torch.float64)
    return torch.bincount(idx, weights=w, minlength=rows * cols).view(rows, cols)
