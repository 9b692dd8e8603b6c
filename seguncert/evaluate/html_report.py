"""One self-contained HTML page per evaluation (``report.html``): opens offline in a browser.

Everything is inside the file: the figures as base64 ``data:`` PNGs, the tables as HTML, no
scripts, no external style sheets or fonts. Sections: headline numbers, calibration, the
per-class table, figures (reliability overall and per class, precision vs uncertainty, examples,
sparsification), and the shift curves when the evaluation ran corruptions or novelty sets.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

from ..io.atomic import atomic_write_text
from .tables import TABLE_COLUMNS, cell

FIGURES = (
    ("reliability.png", "Reliability (top label)"),
    ("reliability_per_class.png", "Reliability per class"),
    ("precision_vs_uncertainty.png", "Precision vs uncertainty percentile"),
    ("examples.png", "Examples: input, prediction, errors, aleatoric, epistemic"),
    ("examples_depth.png", "Depth examples"),
    ("sparsification.png", "Sparsification vs oracle"),
    ("shift.png", "Metrics vs corruption severity (spread over corruptions)"),
    ("calibrators_shift.png", "Calibrators under shift"),
)
STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:1em 0;font-size:90%}"
    "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
    "th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}"
    "img{max-width:100%;border:1px solid #ddd}figure{margin:1.5em 0}"
)


def _num(v, pct: bool = False) -> str:
    if not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{100 * v:.2f}%" if pct else f"{v:.4f}"


def _table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _headline(m: dict) -> str:
    rows = []
    for key, label, pct in (
        ("miou", "mIoU", True),
        ("pixel_accuracy", "pixel accuracy", True),
        ("ece", "ECE (top label)", True),
        ("mean_classwise_ece", "mean class-wise ECE", True),
        ("nll", "NLL (nats)", False),
        ("brier", "Brier", False),
    ):
        if key in m:
            rows.append([label, _num(m[key], pct)])
    for name, q in (m.get("uncertainty") or {}).items():
        rows.append([f"error AUROC of {html.escape(name)}", _num(q.get("auroc"))])
    d = m.get("depth") or {}
    for key in ("abs_rel", "rmse", "delta1", "ause_rmse", "coverage_90"):
        if key in d:
            rows.append([f"depth {key}", _num(d[key])])
    return _table(["metric", "value"], rows)


def _class_table(rows: list[dict]) -> str:
    head = [t + (" %" if f == "pct" else "") for _, t, f in TABLE_COLUMNS]
    return _table(head, [[html.escape(cell(r[k], f)) for k, _, f in TABLE_COLUMNS] for r in rows])


def _shift_tables(m: dict) -> str:
    out = []
    for section, title in (("shift", "Under corruption"), ("novelty", "Novelty detection")):
        table = m.get(section, {}).get("table") if isinstance(m.get(section), dict) else None
        if table:
            head = list(table[0])
            cells = [[html.escape(str(r[h])) for h in head] for r in table]
            out.append(f"<h2>{title}</h2>" + _table(head, cells))
    return "".join(out)


def _figure(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def render(m: dict, rows: list[dict], out: Path) -> str:
    """The page's HTML for metrics ``m`` and per-class ``rows``, figures read from ``out``."""
    title = f"seguncert evaluation: {m.get('split')} ({m.get('num_images')} images)"
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
        f"<p>checkpoint {html.escape(str(m.get('checkpoint')))}; T = {m.get('mc_samples')} MC "
        f"samples, S = {m.get('noise_samples', 0)} noise draws; calibration: "
        f"{html.escape(str(m.get('calibration')))}</p>",
        "<h2>Headline</h2>",
        _headline(m),
    ]
    if rows:
        parts += ["<h2>Per class</h2>", _class_table(rows)]
    parts.append(_shift_tables(m))
    parts.append("<h2>Figures</h2>")
    parts += [_figure(out / name, cap) for name, cap in FIGURES if (out / name).is_file()]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(m: dict, rows: list[dict], out: Path) -> Path:
    return atomic_write_text(out / "report.html", render(m, rows, out))
