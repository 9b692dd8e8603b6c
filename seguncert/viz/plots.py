"""Evaluation figures: reliability diagrams, precision vs uncertainty, sparsification, examples.

Every function draws on a standalone :class:`matplotlib.figure.Figure` with the Agg canvas
(no pyplot state, so nothing leaks between calls or threads and no display is needed) and saves
atomically (:mod:`seguncert.io.atomic`). A crash mid-save
never leaves a half-written figure under the final name.

Binned calibration data ("bins") is a dict of equal-length sequences over the confidence bins:
``counts`` (pixels per bin), ``accuracy`` (fraction correct per bin; NaN or None when empty),
``confidence`` (mean confidence per bin), optional ``edges`` (n_bins + 1; default equal-width
on [0, 1]) and optional ``ece`` (computed from the bins when absent).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from ..io.atomic import atomic_write

DPI = 110


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically and release its memory."""
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    finally:
        fig.clear()  # Figure objects are not registered with pyplot; clearing frees the artists


def _as_bins(bins: Mapping) -> dict[str, np.ndarray | float]:
    """Normalise a bins dict to float arrays (NaN accuracy/confidence where a bin is empty)."""
    counts = np.asarray(bins["counts"], dtype=np.float64)
    n = counts.shape[-1]

    def arr(key):
        v = [np.nan if x is None else x for x in np.asarray(bins[key], dtype=object).ravel()]
        return np.asarray(v, dtype=np.float64).reshape(counts.shape)

    acc, conf = arr("accuracy"), arr("confidence")
    acc[counts == 0] = np.nan
    conf[counts == 0] = np.nan
    edges = np.asarray(bins.get("edges", np.linspace(0.0, 1.0, n + 1)), dtype=np.float64)
    ece = bins.get("ece")
    if ece is None:
        total = counts.sum()
        gap = np.nan_to_num(np.abs(acc - conf))
        ece = float((counts * gap).sum() / total) if total > 0 else float("nan")
    return {"counts": counts, "accuracy": acc, "confidence": conf, "edges": edges, "ece": ece}


def _reliability_axes(ax, b: dict, colour, show_gap: bool = True) -> None:
    edges = b["edges"]
    left, width = edges[:-1], np.diff(edges)
    acc = np.nan_to_num(b["accuracy"])
    ax.bar(
        left,
        acc,
        width=width,
        align="edge",
        color=colour,
        edgecolor="black",
        lw=0.5,
        label="accuracy",
    )
    if show_gap:
        conf = b["confidence"]
        has = ~np.isnan(conf)
        lo = np.minimum(acc, conf)[has]
        ax.bar(
            left[has],
            np.abs(conf - acc)[has],
            bottom=lo,
            width=width[has],
            align="edge",
            color="tab:red",
            alpha=0.3,
            hatch="//",
            edgecolor="tab:red",
            lw=0.5,
            label="gap",
        )
    ax.plot([0, 1], [0, 1], ls="--", color="0.3", lw=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("auto")


def reliability_diagram(
    top_label_bins: Mapping, path: str | Path, title: str = "Reliability (top label)"
) -> Path:
    """Top-label reliability diagram (Guo et al. 2017 Fig. 1 style): accuracy per confidence
    bin against the diagonal, the calibration gap shaded, bin counts as a histogram below."""
    b = _as_bins(top_label_bins)
    fig = _figure(5.2, 6.2)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    _reliability_axes(top, b, "tab:blue")
    top.set_ylabel("accuracy")
    top.set_title(f"{title}\nECE = {100 * b['ece']:.2f}%   pixels = {int(b['counts'].sum()):,}")
    top.legend(loc="upper left", fontsize=8)
    edges = b["edges"]
    bottom.bar(
        edges[:-1],
        b["counts"],
        width=np.diff(edges),
        align="edge",
        color="0.6",
        edgecolor="black",
        lw=0.5,
    )
    if b["counts"].max(initial=0) > 0:
        bottom.set_yscale("log")
    bottom.set_xlabel("confidence (max softmax probability)")
    bottom.set_ylabel("pixels")
    fig.tight_layout()
    return save_figure(fig, path)


def _pool(per_class: Sequence[dict]) -> dict:
    """Pool class-wise bins into one reliability curve (all classes' marginal probabilities)."""
    counts = sum(b["counts"] for b in per_class)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = sum(np.nan_to_num(b["accuracy"]) * b["counts"] for b in per_class) / counts
        conf = sum(np.nan_to_num(b["confidence"]) * b["counts"] for b in per_class) / counts
    return {"counts": counts, "accuracy": acc, "confidence": conf, "edges": per_class[0]["edges"]}


def _split_classwise(classwise_bins, num: int) -> list[dict]:
    if isinstance(classwise_bins, Mapping):  # arrays of shape (C, n_bins)
        eces = classwise_bins.get("ece")
        out = []
        for c in range(num):
            d = {k: np.asarray(classwise_bins[k])[c] for k in ("counts", "accuracy", "confidence")}
            if "edges" in classwise_bins:
                d["edges"] = classwise_bins["edges"]
            if eces is not None:
                d["ece"] = eces[c]
            out.append(d)
        return [_as_bins(d) for d in out]
    return [_as_bins(d) for d in classwise_bins]


def classwise_reliability_grid(
    classwise_bins,
    class_names: Sequence[str],
    palette: Sequence[Sequence[int]],
    path: str | Path,
    overall: Mapping | None = None,
) -> Path:
    """Grid of reliability diagrams: first the overall curve, then one panel per class in the
    class's colour, titled with that class's ECE (Guo et al.'s class-wise variant: bins over
    p̄_c for every pixel, correct when the label is c).

    ``classwise_bins``: a list of bins dicts (one per class) or one dict of (C, n_bins) arrays.
    ``overall``: top-label bins for the first panel; None pools the class-wise bins instead.
    """
    per_class = _split_classwise(classwise_bins, len(class_names))
    first = _as_bins(overall) if overall is not None else _as_bins(_pool(per_class))
    first_title = "overall (top label)" if overall is not None else "all classes (pooled)"
    n = len(per_class) + 1
    ncols = min(4, n)
    nrows = math.ceil(n / ncols)
    fig = _figure(3.3 * ncols, 3.2 * nrows)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    panels = [(first_title, first, "tab:blue")]
    for c, b in enumerate(per_class):
        rgb = np.asarray(palette[c], dtype=np.float64) / 255.0 if c < len(palette) else "tab:blue"
        panels.append((str(class_names[c]), b, rgb))
    for ax, (name, b, colour) in zip(axes, panels, strict=False):
        _reliability_axes(ax, b, colour)
        ax.set_title(f"{name}\nECE {100 * b['ece']:.2f}%  n={int(b['counts'].sum()):,}", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("confidence", fontsize=8)
        ax.set_ylabel("accuracy", fontsize=8)
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(
        "Class-wise reliability (bars: accuracy per bin; dashed: perfect calibration)", fontsize=11
    )
    fig.tight_layout()
    return save_figure(fig, path)


def precision_vs_percentile_plot(
    curves: Mapping[str, tuple],
    path: str | Path,
    title: str = "Precision vs uncertainty percentile",
) -> Path:
    """Kendall & Gal (2017) Fig. 3: pixel accuracy after discarding the most uncertain x%.

    ``curves``: map name -> (percentiles removed, accuracy of the remaining pixels).
    """
    fig = _figure(6.0, 4.5)
    ax = fig.subplots()
    for name, (pct, acc) in curves.items():
        ax.plot(
            np.asarray(pct, dtype=float), np.asarray(acc, dtype=float), marker="o", ms=3, label=name
        )
    ax.set_xlabel("uncertainty percentile removed (%)")
    ax.set_ylabel("precision (pixel accuracy of the rest)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def sparsification_plot(
    curves: Mapping[str, Mapping[str, tuple]],
    oracle: Mapping[str, tuple],
    path: str | Path,
    ause: Mapping[str, Mapping[str, float]] | None = None,
) -> Path:
    """Depth sparsification curves: error of the remaining pixels as the most uncertain ones are
    removed, against the oracle (largest errors removed first). One panel per error metric.

    ``curves``: metric name (e.g. "rmse") -> {uncertainty map -> (fraction removed, error)};
    ``oracle``: metric name -> (fraction removed, error); ``ause``: metric -> map -> AUSE.
    """
    metrics = list(curves)
    fig = _figure(5.2 * max(1, len(metrics)), 4.3)
    axes = np.atleast_1d(fig.subplots(1, max(1, len(metrics)), squeeze=False)).ravel()
    for ax, metric in zip(axes, metrics, strict=False):
        for name, (frac, err) in curves[metric].items():
            label = name
            if ause and metric in ause and name in ause[metric]:
                label = f"{name} (AUSE {ause[metric][name]:.4f})"
            ax.plot(np.asarray(frac, float), np.asarray(err, float), label=label)
        if metric in oracle:
            of, oe = oracle[metric]
            ax.plot(
                np.asarray(of, float), np.asarray(oe, float), ls="--", color="black", label="oracle"
            )
        ax.set_xlabel("fraction of pixels removed")
        ax.set_ylabel(metric)
        ax.set_title(f"Sparsification ({metric})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


EXAMPLE_COLUMNS = ("input", "fused prediction", "error (red = wrong)", "aleatoric", "epistemic")


def _error_rgb(err: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    rgb = np.zeros((*err.shape, 3), dtype=np.float64)
    rgb[err] = (0.85, 0.1, 0.1)
    rgb[~err] = (0.95, 0.95, 0.95)
    if valid is not None:
        rgb[~valid] = (0.45, 0.45, 0.45)
    return rgb


def example_grid(
    image,
    pred_colour,
    error_mask,
    aleatoric,
    epistemic,
    path: str | Path,
    valid=None,
    names: Sequence[str] | None = None,
    column_titles: Sequence[str] = EXAMPLE_COLUMNS,
    pred_scale: tuple[float, float, str] | None = None,
) -> Path:
    """One row per example: input | fused prediction | error mask | aleatoric | epistemic.

    ``image``, ``pred_colour``: (N, H, W, 3) uint8 RGB; ``error_mask``: (N, H, W) bool (True =
    misclassified; drawn red, ignored pixels grey when ``valid`` is given) or float (an error
    magnitude, e.g. depth |d - d*|, drawn as a heat map); ``aleatoric``, ``epistemic``:
    (N, H, W) float. Uncertainty columns share one colour scale per column (0 to the 99th
    percentile) so rows are comparable; each panel has its own colour bar.
    ``pred_scale``: (vmin, vmax, cmap) that coloured ``pred_colour`` (e.g. a depth map): adds
    its colour bar; without it the prediction column gets none (class colours).
    """
    image = np.asarray(image)
    n = image.shape[0]
    if n == 0:
        raise ValueError("example_grid needs at least one example")
    err = np.asarray(error_mask)
    alea, epi = np.asarray(aleatoric, float), np.asarray(epistemic, float)

    def vmax(a):
        finite = a[np.isfinite(a)]
        top = float(np.percentile(finite, 99)) if finite.size else 1.0
        return top if top > 0 else 1.0

    scales = {"err": vmax(err.astype(float)), "alea": vmax(alea), "epi": vmax(epi)}
    h, w = image.shape[1:3]
    panel_w = 3.0
    fig = _figure(panel_w * 5 + 1.5, panel_w * h / w * n + 0.8)
    axes = fig.subplots(n, 5, squeeze=False)

    def bar(ax, mappable=None):
        if mappable is None:  # reserve the same room so every panel of a row has one size
            fig.colorbar(ScalarMappable(), ax=ax, fraction=0.046, pad=0.02).ax.set_visible(False)
        else:
            fig.colorbar(mappable, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=7)

    for i in range(n):
        row = axes[i]
        row[0].imshow(image[i])
        bar(row[0])
        row[1].imshow(np.asarray(pred_colour[i]))
        if pred_scale is not None:
            lo, hi, cmap = pred_scale
            bar(row[1], ScalarMappable(Normalize(lo, hi), cmap))
        else:
            bar(row[1])
        if err.dtype == bool:
            row[2].imshow(_error_rgb(err[i], None if valid is None else np.asarray(valid[i])))
            bar(row[2])
        else:
            bar(row[2], row[2].imshow(err[i], cmap="magma", vmin=0, vmax=scales["err"]))
        for ax, a, key in ((row[3], alea[i], "alea"), (row[4], epi[i], "epi")):
            bar(ax, ax.imshow(a, cmap="inferno", vmin=0, vmax=scales[key]))
        for j, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(column_titles[j], fontsize=10)
        if names is not None:
            row[0].set_ylabel(str(names[i]), fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
