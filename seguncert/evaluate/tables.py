"""The per-class table's columns and cell formatting, shared by the markdown, CSV and HTML
reports."""

from __future__ import annotations

import math

TABLE_COLUMNS = (
    ("class", "class", None),
    ("support", "support (px)", "d"),
    ("pixel_share", "pixel share", "pct"),
    ("iou", "IoU", "pct"),
    ("accuracy", "accuracy", "pct"),
    ("precision", "precision", "pct"),
    ("mean_confidence", "mean confidence (pred.)", "pct"),
    ("mean_prob", "mean p_c", "pct"),
    ("classwise_ece", "class-wise ECE", "pct"),
    ("mi_auroc", "MI AUROC", "f"),
    ("mean_aleatoric", "mean aleatoric", "f"),
    ("mean_epistemic", "mean epistemic", "f"),
)


def cell(v, fmt) -> str:
    if fmt is None:
        return str(v)
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if fmt == "d":
        return f"{int(v):,}"
    if fmt == "pct":
        return f"{100 * v:.2f}"
    return f"{v:.3f}"
