"""What an overlay video shows: the per-frame maps of each checkpoint kind, their fixed colour
scales (calibrated once per video), the composed panel row and the per-frame statistics. Pure
drawing: running the model on frames is :mod:`seguncert.inference`.

Panels by name (``--panels`` of tools/infer.py):

- ``input``: the frame; ``seg``: fused prediction blended over the frame (a legend of every
  class runs in a strip below the composed panels);
- ``aleatoric`` / ``epistemic`` / ``entropy``: segmentation checkpoints: expected entropy,
  mutual information and predictive entropy (nats); depth checkpoints: aleatoric and epistemic
  standard deviation σ (metres; entropy is the total σ);
- ``depth``: fused depth (metres); ``depth_aleatoric`` / ``depth_epistemic``: σ in metres
  (joint checkpoints, where ``aleatoric`` / ``epistemic`` mean the segmentation maps);
- ``novelty``: segmentation checkpoints with a fitted feature density
  (:mod:`seguncert.uncertainty.feature_density`): its score, in standard deviations of the
  training pixels' scores above their mean (0 = a typical training pixel), the map that finds
  foreign objects (docs/benchmarks.md, novelty section).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..tasks import get_task
from .overlays import (
    compose_panels,
    depth_panel,
    heatmap_panel,
    legend_strip,
    segmentation_panel,
)

SEG_MAPS = ("aleatoric", "epistemic", "entropy")
NOVELTY = "novelty"  # the feature-density map, drawn when the checkpoint has a fit
DEPTH_MAPS = ("depth_aleatoric", "depth_epistemic", "depth_total")
# name -> (title, colormap, colour-bar unit)
MAP_STYLE = {
    "aleatoric": ("aleatoric", "inferno", "nats"),
    "epistemic": ("epistemic", "inferno", "nats"),
    "entropy": ("entropy", "inferno", "nats"),
    "depth": ("depth", "turbo_r", "m"),
    "depth_aleatoric": ("aleatoric std", "viridis", "m"),
    "depth_epistemic": ("epistemic std", "viridis", "m"),
    "depth_total": ("total std", "viridis", "m"),
    NOVELTY: ("novelty", "magma", "sd"),
}
# For a depth checkpoint the generic names point at the depth maps.
DEPTH_ALIASES = {
    "aleatoric": "depth_aleatoric",
    "epistemic": "depth_epistemic",
    "entropy": "depth_total",
}


def panel_names(kind: str) -> tuple[str, ...]:
    """Every panel a checkpoint kind can show."""
    task = get_task(kind, "checkpoint kind")
    names = ["input"]
    if task.segmentation:
        names += ["seg", *SEG_MAPS, NOVELTY]
    if task.depth:
        names += ["depth", *DEPTH_MAPS]
        if not task.segmentation:
            names += list(DEPTH_ALIASES)
    return tuple(names)


def resolve_map(kind: str, name: str) -> str:
    """A depth-only checkpoint's generic map names point at its depth maps."""
    return name if get_task(kind).segmentation else DEPTH_ALIASES.get(name, name)


def result_maps(result: dict, kind: str) -> dict[str, np.ndarray]:
    """Per-frame float maps (H, W) by map name, from one frame of an MC sampler result
    (numpy arrays, batch dimension removed). Depth variances become σ (metres)."""
    task = get_task(kind)
    maps: dict[str, np.ndarray] = {}
    if task.segmentation:
        for k in SEG_MAPS:
            maps[k] = result[k]
    if task.depth:
        d = task.depth_maps(result)
        maps["depth"] = d["depth"]
        for k, var in zip(DEPTH_MAPS, ("aleatoric_var", "epistemic_var", "total_var"), strict=True):
            maps[k] = np.sqrt(np.maximum(d[var], 0.0))
    if NOVELTY in result:
        maps[NOVELTY] = result[NOVELTY]
    return maps


def uncertainty_key(kind: str) -> tuple[str, str]:
    """(aleatoric map, epistemic map) reported in the statistics for a checkpoint kind."""
    if get_task(kind).segmentation:
        return "aleatoric", "epistemic"
    return "depth_aleatoric", "depth_epistemic"


@dataclass
class Scales:
    """Fixed colour range (lo, hi) per map name for a whole video, and the 'uncertain' threshold
    on the epistemic map used by the statistics."""

    ranges: dict[str, tuple[float, float]]
    threshold: float

    @classmethod
    def calibrate(
        cls,
        frames_maps: Sequence[dict[str, np.ndarray]],
        meta: dict,
        kind: str,
        fixed: tuple[float, float] | None = None,
        threshold: float | None = None,
        percentile: float = 99.0,
    ) -> Scales:
        """Uncertainty maps: [0, 99th percentile over the calibration frames] (or ``fixed``);
        depth: the checkpoint's [min_depth, max_depth] (calibration percentiles when absent);
        novelty: [0 (the training mean), 99th percentile] (``fixed`` is in nats: not for it).
        Threshold: ``threshold`` or the 90th percentile of the epistemic map."""
        names = sorted({k for m in frames_maps for k in m})
        ranges: dict[str, tuple[float, float]] = {}
        for name in names:
            vals = np.concatenate([np.ravel(m[name]) for m in frames_maps])
            vals = vals[np.isfinite(vals)]
            if name == "depth":
                lo, hi = meta.get("min_depth"), meta.get("max_depth")
                if lo is None or hi is None or not hi > lo:
                    lo, hi = np.percentile(vals, [1.0, percentile]) if vals.size else (0.0, 1.0)
            elif fixed is not None and name != NOVELTY:
                lo, hi = fixed
            else:
                lo, hi = 0.0, float(np.percentile(vals, percentile)) if vals.size else 1.0
            ranges[name] = (float(lo), float(max(hi, lo + 1e-6)))
        if threshold is None:
            epi = uncertainty_key(kind)[1]
            vals = np.concatenate([np.ravel(m[epi]) for m in frames_maps]) if frames_maps else []
            threshold = float(np.percentile(vals, 90.0)) if len(vals) else 0.0
        return cls(ranges, float(threshold))


class PanelRenderer:
    """Compose one output frame: the chosen panels in a row (or 2x2 grid) under title strips."""

    def __init__(
        self,
        kind: str,
        panels: Sequence[str],
        meta: dict,
        scales: Scales,
        layout: str = "row",
        alpha: float = 0.55,
    ):
        valid = panel_names(kind)
        bad = [p for p in panels if p not in valid]
        if bad:
            raise ConfigError(
                f"panel(s) {', '.join(bad)} not available for a {kind} checkpoint; "
                f"choose from {', '.join(valid)}"
            )
        self.kind, self.panels, self.scales = kind, list(panels), scales
        self.layout, self.alpha = layout, alpha
        self.class_names = list(meta.get("class_names") or [])
        self.palette = meta.get("palette") or []

    def titles(self) -> list[str]:
        out = []
        for p in self.panels:
            if p == "input":
                out.append("input")
            elif p == "seg":
                out.append("segmentation")
            else:
                out.append(MAP_STYLE[resolve_map(self.kind, p)][0])
        return out

    def __call__(self, rgb: np.ndarray, maps: dict[str, np.ndarray], pred: np.ndarray | None):
        cells = []
        for p in self.panels:
            if p == "input":
                cells.append(rgb)
            elif p == "seg":
                cells.append(
                    segmentation_panel(
                        rgb, pred, self.class_names, self.palette, self.alpha, legend=False
                    )
                )
            else:
                name = resolve_map(self.kind, p)
                _, cmap, unit = MAP_STYLE[name]
                lo, hi = self.scales.ranges[name]
                if name == "depth":
                    cells.append(depth_panel(maps[name], lo, hi, cmap, unit))
                else:
                    cells.append(heatmap_panel(maps[name], lo, hi, cmap, unit))
        frame = compose_panels(cells, self.titles(), self.layout)
        if "seg" in self.panels and self.class_names:
            # Below the panels, every class: over the segmentation it would hide the scene.
            strip = legend_strip(self.class_names, self.palette, frame.shape[1], rgb.shape[0])
            frame = np.concatenate([frame, strip], axis=0)
        return frame


def composed_size(kind: str, panels: Sequence[str], meta: dict, layout: str, hw) -> tuple:
    """(H, W) of the frames :class:`PanelRenderer` composes for ``hw``-sized inputs."""
    h, w = hw
    names = set(MAP_STYLE)
    scales = Scales({n: (0.0, 1.0) for n in names}, 0.0)
    render = PanelRenderer(kind, panels, meta, scales, layout)
    zeros = {n: np.zeros((h, w), np.float32) for n in names}
    frame = render(np.zeros((h, w, 3), np.uint8), zeros, np.zeros((h, w), np.int64))
    return frame.shape[:2]


def stats_header(kind: str, class_names: Sequence[str], novelty: bool = False) -> list[str]:
    task = get_task(kind)
    cols = ["frame", "mean_aleatoric", "mean_epistemic", "frac_uncertain"]
    if task.segmentation:
        cols += [f"frac_{n}" for n in class_names]
    if task.depth:
        cols += ["mean_depth"]
    if novelty:
        cols += ["mean_novelty", "max_novelty"]
    return cols


def frame_stats(
    index: int,
    maps: dict[str, np.ndarray],
    pred: np.ndarray | None,
    kind: str,
    class_names: Sequence[str],
    threshold: float,
) -> list:
    """One CSV row (order of :func:`stats_header`): means of the aleatoric and epistemic maps,
    share of pixels whose epistemic value exceeds ``threshold``, class shares, mean depth, and
    the mean and maximum of the novelty map when there is one (a small foreign object moves
    the maximum, not the mean)."""
    ale, epi = uncertainty_key(kind)
    row = [
        index,
        float(np.mean(maps[ale])),
        float(np.mean(maps[epi])),
        float(np.mean(maps[epi] > threshold)),
    ]
    task = get_task(kind)
    if task.segmentation:
        counts = np.bincount(pred.ravel(), minlength=len(class_names))[: len(class_names)]
        row += (counts / max(pred.size, 1)).tolist()
    if task.depth:
        row.append(float(np.mean(maps["depth"])))
    if NOVELTY in maps:
        row += [float(np.mean(maps[NOVELTY])), float(np.max(maps[NOVELTY]))]
    return row
