"""Write an evaluation's report: metrics.json, the per-class table (.md/.csv) and the figures.

Every file goes to a temporary name first and is renamed into place, so an interrupted
evaluation never leaves a half-written file. NaN / inf (a metric undefined on this split, e.g.
the IoU of a class that never occurs) become JSON ``null``.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from ..io.atomic import atomic_write_json, atomic_write_text
from ..viz import plots
from .html_report import write_html
from .tables import TABLE_COLUMNS, cell


def json_safe(obj):
    """Plain JSON types: numpy scalars/arrays to Python, NaN/inf to None."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if hasattr(obj, "tolist"):  # torch tensors (e.g. a per-class temperature)
        return json_safe(obj.tolist())
    return obj


def class_table_markdown(rows: list[dict], metrics: dict) -> str:
    head = [title + (" %" if fmt == "pct" else "") for _, title, fmt in TABLE_COLUMNS]
    lines = [
        f"# Per-class calibration ({metrics['split']}, {metrics['num_images']} images, "
        f"T = {metrics['mc_samples']})",
        "",
        "IoU/accuracy/precision from the fused MC prediction; mean confidence = mean top-label "
        "probability over pixels predicted as the class (compare with precision); mean p_c = "
        "mean predicted probability of the class over all labelled pixels (compare with the "
        "pixel share); class-wise ECE bins p_c of every pixel (Guo et al. 2017); MI AUROC = "
        "how well mutual information flags the errors among the class's pixels.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" if fmt is None else "---:" for _, _, fmt in TABLE_COLUMNS) + "|",
    ]
    for r in rows:
        lines.append("| " + " | ".join(cell(r[k], f) for k, _, f in TABLE_COLUMNS) + " |")
    lines += [
        "",
        f"mIoU {cell(metrics['miou'], 'pct')}%, ECE {cell(metrics['ece'], 'pct')}%, "
        f"mean class-wise ECE {cell(metrics['mean_classwise_ece'], 'pct')}%, "
        f"NLL {cell(metrics['nll'], 'f')}, Brier {cell(metrics['brier'], 'f')}",
        "",
    ]
    return "\n".join(lines)


def class_table_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([k for k, _, _ in TABLE_COLUMNS])
    for r in rows:
        w.writerow(["" if r[k] is None or r[k] != r[k] else r[k] for k, _, _ in TABLE_COLUMNS])
    return buf.getvalue()


def write_examples(
    rows: list[dict], path: Path, column_titles=plots.EXAMPLE_COLUMNS, pred_scale=None
) -> Path:
    """examples.png from rows of cropped numpy maps (all rows cropped to the smallest size)."""
    h = min(r["image"].shape[0] for r in rows)
    w = min(r["image"].shape[1] for r in rows)

    def stack(key):
        return np.stack([np.asarray(r[key])[:h, :w] for r in rows])

    return plots.example_grid(
        stack("image"),
        stack("pred"),
        stack("error"),
        stack("aleatoric"),
        stack("epistemic"),
        path,
        valid=stack("valid"),
        names=[r["name"] for r in rows],
        column_titles=column_titles,
        pred_scale=pred_scale,
    )


def write_segmentation_figures(metrics: dict, meta, out: Path) -> list[Path]:
    files = [
        plots.reliability_diagram(
            metrics["reliability"],
            out / "reliability.png",
            title=f"Reliability, {metrics['split']} (T = {metrics['mc_samples']})",
        ),
        plots.classwise_reliability_grid(
            metrics["classwise_reliability"],
            meta.class_names,
            meta.palette,
            out / "reliability_per_class.png",
            overall=metrics["reliability"],
        ),
    ]
    curves = {k: (c["percentile"], c["accuracy"]) for k, c in metrics["precision_curves"].items()}
    files.append(plots.precision_vs_percentile_plot(curves, out / "precision_vs_uncertainty.png"))
    return files


def write_report(metrics: dict, rows: list[dict], meta, out_dir, seg_examples, depth_examples):
    """All report files for one evaluation; returns their paths. metrics.json is written last,
    so its presence means the whole report is complete."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    if rows:
        files.append(
            atomic_write_text(out / "calibration_per_class.md", class_table_markdown(rows, metrics))
        )
        files.append(atomic_write_text(out / "calibration_per_class.csv", class_table_csv(rows)))
        files += write_segmentation_figures(metrics, meta, out)
    if "depth" in metrics:
        from .depth import write_depth_figures

        files += write_depth_figures(metrics["depth"], out)
    if seg_examples:
        files.append(write_examples(seg_examples, out / "examples.png"))
    if depth_examples:
        name = "examples_depth.png" if seg_examples else "examples.png"
        titles = ("input", "fused depth (m)", "|error| (m)", "aleatoric σ (m)", "epistemic σ (m)")
        scale = (meta.min_depth, meta.max_depth, "turbo_r")
        files.append(write_examples(depth_examples, out / name, titles, pred_scale=scale))
    files.append(write_html(json_safe(metrics), rows, out))
    metrics["files"] = sorted(p.name for p in files) + ["metrics.json"]
    atomic_write_json(out / "metrics.json", json_safe(metrics))
    return files + [out / "metrics.json"]


def _fmt(v, pct=False) -> str:
    if v is None or v != v:  # undefined (None / NaN)
        return "n/a"
    return f"{100 * v:.2f}%" if pct else f"{v:.4f}"


def summary_text(m: dict, out: Path) -> str:
    """The few lines tools/evaluate.py prints: headline numbers and where the files went."""
    lines = [
        f"evaluated {m['num_images']} images ({m['num_pixels']:,} pixels) of split "
        f"{m['split']!r} with T={m['mc_samples']} MC samples"
    ]
    if "miou" in m:
        mi = m["uncertainty"]["epistemic"]["auroc"]
        lines.append(
            f"mIoU {_fmt(m['miou'], True)}  pixel acc {_fmt(m['pixel_accuracy'], True)}  "
            f"ECE {_fmt(m['ece'], True)}  NLL {_fmt(m['nll'])}  MI AUROC {_fmt(mi)}"
        )
    if m.get("calibration") not in (None, "none"):
        lines.append(f"calibration: {m['calibration']}")
    if "depth" in m:
        d = m["depth"]
        lines.append(
            f"depth AbsRel {_fmt(d['abs_rel'])}  RMSE {_fmt(d['rmse'])}  "
            f"delta1 {_fmt(d['delta1'], True)}  AUSE-RMSE {_fmt(d['ause_rmse'])}"
        )
    lines.append(f"wrote {out}/: {', '.join(m['files'])}")
    return "\n".join(lines)
