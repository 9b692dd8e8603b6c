"""Metric vs corruption severity, one line per calibrator (Ovadia et al. 2019 style).

Severity 0 is the clean data; at each severity the line is the mean over corruptions and the
band spans the lowest and highest corruption.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .plots import _figure, save_figure

PANELS = (
    ("ece", "ECE"),
    ("mean_classwise_ece", "mean class-wise ECE"),
    ("nll", "NLL"),
    ("miou", "mIoU"),
)


def shift_plot(rows: list[dict], path: str | Path, panels=PANELS) -> Path:
    """``rows`` as written by :func:`seguncert.evaluate.shift.shift_study`."""
    calibrators = list(dict.fromkeys(r["calibrator"] for r in rows))
    severities = sorted({r["severity"] for r in rows})
    fig = _figure(3.2 * len(panels), 3.0)
    for j, (key, title) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), j + 1)
        for cal in calibrators:
            mean, lo, hi = [], [], []
            for s in severities:
                v = [r[key] for r in rows if r["calibrator"] == cal and r["severity"] == s]
                v = [x for x in v if x is not None and np.isfinite(x)]
                mean.append(np.mean(v) if v else np.nan)
                lo.append(np.min(v) if v else np.nan)
                hi.append(np.max(v) if v else np.nan)
            (line,) = ax.plot(severities, mean, marker="o", ms=3, label=cal)
            ax.fill_between(severities, lo, hi, color=line.get_color(), alpha=0.15, lw=0)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("severity (0 = clean)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=6, loc="upper left")
    fig.tight_layout()
    return save_figure(fig, path)
