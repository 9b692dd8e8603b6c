"""What an overlay video shows: the per-frame maps of each checkpoint kind, their fixed colour
scales (calibrated once per video), the composed panel row and the per-frame statistics.

Panels by name (``--panels`` of tools/infer.py):

- ``input``: the frame; ``seg``: fused prediction blended over the frame, with a legend;
- ``aleatoric`` / ``epistemic`` / ``entropy``: segmentation checkpoints: expected entropy,
  mutual information and predictive entropy (nats); depth checkpoints: aleatoric and epistemic
  standard deviation σ (metres; entropy is the total σ);
- ``depth``: fused depth (metres); ``depth_aleatoric`` / ``depth_epistemic``: σ in metres
  (joint checkpoints, where ``aleatoric`` / ``epistemic`` mean the segmentation maps).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from .overlays import compose_panels, depth_panel, heatmap_panel, segmentation_panel

DEFAULT_PANELS = {
    "segmentation": ("input", "seg", "aleatoric", "epistemic"),
    "depth": ("input", "depth", "aleatoric", "epistemic"),
    "joint": ("input", "seg", "depth", "epistemic"),
}
SEG_MAPS = ("aleatoric", "epistemic", "entropy")
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
}
# For a depth checkpoint the generic names point at the depth maps.
DEPTH_ALIASES = {
    "aleatoric": "depth_aleatoric",
    "epistemic": "depth_epistemic",
    "entropy": "depth_total",
}


def panel_names(kind: str) -> tuple[str, ...]:
    """Every panel a checkpoint kind can show."""
    names = ["input"]
    if kind in ("segmentation", "joint"):
        names += ["seg", *SEG_MAPS]
    if kind in ("depth", "joint"):
        names += ["depth", *DEPTH_MAPS]
    if kind == "depth":
        names += list(DEPTH_ALIASES)
    return tuple(names)


def resolve_map(kind: str, name: str) -> str:
    return DEPTH_ALIASES.get(name, name) if kind == "depth" else name


def result_maps(result: dict, kind: str) -> dict[str, np.ndarray]:
    """Per-frame float maps (H, W) by map name, from one frame of an MC sampler result
    (numpy arrays, batch dimension removed). Depth variances become σ (metres)."""
    maps: dict[str, np.ndarray] = {}
    if kind in ("segmentation", "joint"):
        for k in SEG_MAPS:
            maps[k] = result[k]
    if kind in ("depth", "joint"):
        maps["depth"] = result["depth"]
        prefix = "depth_" if kind == "joint" else ""  # the sampler's joint keys are prefixed
        for k, var in zip(DEPTH_MAPS, ("aleatoric_var", "epistemic_var", "total_var")):
            maps[k] = np.sqrt(np.maximum(result[prefix + var], 0.0))
    return maps


def uncertainty_key(kind: str) -> tuple[str, str]:
    """(aleatoric map, epistemic map) reported in the statistics for a checkpoint kind."""
    if kind == "depth":
        return "depth_aleatoric", "depth_epistemic"
    return "aleatoric", "epistemic"


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
        depth: the checkpoint's [min_depth, max_depth] (calibration percentiles when absent).
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
            elif fixed is not None:
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
                    segmentation_panel(rgb, pred, self.class_names, self.palette, self.alpha)
                )
            else:
                name = resolve_map(self.kind, p)
                _, cmap, unit = MAP_STYLE[name]
                lo, hi = self.scales.ranges[name]
                if name == "depth":
                    cells.append(depth_panel(maps[name], lo, hi, cmap, unit))
                else:
                    cells.append(heatmap_panel(maps[name], lo, hi, cmap, unit))
        return compose_panels(cells, self.titles(), self.layout)


def stats_header(kind: str, class_names: Sequence[str]) -> list[str]:
    cols = ["frame", "mean_aleatoric", "mean_epistemic", "frac_uncertain"]
    if kind in ("segmentation", "joint"):
        cols += [f"frac_{n}" for n in class_names]
    if kind in ("depth", "joint"):
        cols += ["mean_depth"]
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
    share of pixels whose epistemic value exceeds ``threshold``, class shares, mean depth."""
    ale, epi = uncertainty_key(kind)
    row = [
        index,
        float(np.mean(maps[ale])),
        float(np.mean(maps[epi])),
        float(np.mean(maps[epi] > threshold)),
    ]
    if kind in ("segmentation", "joint"):
        counts = np.bincount(pred.ravel(), minlength=len(class_names))[: len(class_names)]
        row += (counts / max(pred.size, 1)).tolist()
    if kind in ("depth", "joint"):
        row.append(float(np.mean(maps["depth"])))
    return row


# ---------------------------------------------------------------- running a video through a model


def predict_frames(step, frames: Sequence[np.ndarray], meta: dict, device) -> list[dict]:
    """uint8 RGB frames (same size) -> one dict of (H, W) numpy maps per frame.

    Normalises with the checkpoint's mean/std, reflect-pads to a multiple of 32 (the networks
    downsample 5 times) and crops the maps back. ``step`` is an MCSampler, or a TemporalMC
    (recognised by its ``fresh_samples``; batch of one frame, given the frame for its flow).
    """
    import torch
    import torch.nn.functional as F

    from ..data.transforms import normalize_image

    h, w = frames[0].shape[:2]
    x = torch.stack([normalize_image(f, meta["mean"], meta["std"]) for f in frames]).to(device)
    ph, pw = -h % 32, -w % 32
    if ph or pw:  # reflect needs the pad smaller than the side; tiny frames replicate instead
        x = F.pad(x, (0, pw, 0, ph), mode="reflect" if ph < h and pw < w else "replicate")
    with torch.inference_mode():
        if getattr(step, "fresh_samples", None) is not None:
            out = step(x, frame_rgb=frames[0])  # unpadded: TemporalMC aligns it top-left
        else:
            out = step(x)
    out = {k: v[..., :h, :w].float().cpu().numpy() for k, v in out.items() if v.dim() == 3}
    return [{k: v[i] for k, v in out.items()} for i in range(len(frames))]


def _pred(res: dict) -> np.ndarray | None:
    return res["pred"].astype(np.int64) if "pred" in res else None


def spread(n: int | None, k: int) -> list[int] | None:
    """k frame indices spread evenly over n frames (None when n is unknown)."""
    return sorted(set(np.linspace(0, n - 1, min(k, n)).round().astype(int).tolist())) if n else None


def calibrate_video(reader, predict, kind, meta, fixed, threshold, batch, frames=8) -> Scales:
    """Fix a video's colour scales from ``frames`` frames spread through it (the first ones
    when the frame count is unknown); ``predict(frames) -> list of result dicts``."""
    cal = [f for _, f in reader.read_frames(spread(reader.frame_count, frames) or range(frames))]
    res = [r for k in range(0, len(cal), batch) for r in predict(cal[k : k + batch])]
    return Scales.calibrate([result_maps(r, kind) for r in res], meta, kind, fixed, threshold)


def overlay_video(
    reader, predict, render: PanelRenderer, path, batch, frames_dir=None, bar=None, sheet_frames=6
):
    """Run every frame of ``reader`` through ``predict`` (``batch`` frames at a time), write the
    composed frames to the video ``path`` (atomically) and optionally as PNGs to ``frames_dir``.
    Returns (statistics rows, [(index, frame)] for a contact sheet, frames done)."""
    from ..video import AtomicVideoWriter, write_image

    names = render.class_names
    rows, sheet, done, pending = [], [], 0, []
    sheet_idx = spread(reader.frame_count, sheet_frames)
    writer = None
    try:
        for item in [*reader, None]:
            if item is not None:
                pending.append(item)
            if not pending or (item is not None and len(pending) < batch):
                continue
            for (i, rgb), res in zip(pending, predict([f for _, f in pending])):
                maps, pred = result_maps(res, render.kind), _pred(res)
                frame = render(rgb, maps, pred)
                if writer is None:
                    writer = AtomicVideoWriter(path, reader.fps, frame.shape[:2])
                writer.write(frame)
                rows.append(frame_stats(i, maps, pred, render.kind, names, render.scales.threshold))
                if frames_dir:
                    write_image(f"{frames_dir}/{i:06d}.png", frame)
                if (i in sheet_idx) if sheet_idx else len(sheet) < sheet_frames:
                    sheet.append((i, frame))
            done += len(pending)
            if bar is not None:
                bar.update(len(pending))
            pending = []
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is None:
        raise ConfigError(f"no frames decoded from {reader.path}")
    writer.close()
    return rows, sheet, done
