"""The evaluation figures: each writes one non-empty PNG atomically (no temp files left)."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib import pyplot as plt

from seguncert.viz import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _bins(rng, n=15, empty=(0, 1)):
    counts = rng.integers(1, 1000, n).astype(float)
    counts[list(empty)] = 0
    conf = (np.arange(n) + 0.5) / n
    acc = np.clip(conf + rng.normal(0, 0.1, n), 0, 1)
    acc = [None if c == 0 else a for a, c in zip(acc, counts, strict=True)]
    return {"counts": counts, "accuracy": acc, "confidence": conf}


def _check_png(path):
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith(".")) == []
    assert plt.get_fignums() == []  # nothing registered with pyplot, nothing left open


def test_reliability_diagram_computes_ece_when_absent(tmp_path):
    rng = np.random.default_rng(0)
    b = _bins(rng)
    out = plots.reliability_diagram(b, tmp_path / "rel.png", title="test")
    _check_png(out)
    norm = plots._as_bins(b)
    acc = np.nan_to_num(norm["accuracy"])
    expect = float((b["counts"] * np.abs(acc - b["confidence"])).sum() / b["counts"].sum())
    assert norm["ece"] == pytest.approx(expect)


def test_classwise_grid_from_lists_and_arrays(tmp_path):
    rng = np.random.default_rng(1)
    per = [_bins(rng) for _ in range(3)]
    names, palette = ["a", "b", "c"], [[200, 40, 40], [40, 200, 40], [40, 40, 200]]
    _check_png(plots.classwise_reliability_grid(per, names, palette, tmp_path / "grid.png"))
    arrays = {
        k: np.array([[np.nan if v is None else v for v in b[k]] for b in per])
        for k in ("counts", "accuracy", "confidence")
    }
    arrays["ece"] = [0.1, 0.2, 0.3]
    split = plots._split_classwise(arrays, 3)
    assert [b["ece"] for b in split] == [0.1, 0.2, 0.3]
    np.testing.assert_array_equal(split[1]["counts"], per[1]["counts"])
    out = plots.classwise_reliability_grid(
        arrays, names, palette, tmp_path / "grid2.png", overall=_bins(rng)
    )
    _check_png(out)


def test_precision_and_sparsification(tmp_path):
    pct = np.arange(0, 100, 10)
    curves = {"entropy": (pct, 0.8 + pct / 600), "epistemic": (pct, 0.8 + pct / 900)}
    _check_png(plots.precision_vs_percentile_plot(curves, tmp_path / "p.png"))
    frac = np.linspace(0, 0.99, 20)
    sp = {"rmse": {"aleatoric": (frac, 1 - frac / 2)}, "abs_rel": {"aleatoric": (frac, 1 - frac)}}
    oracle = {"rmse": (frac, 1 - frac), "abs_rel": (frac, 1 - frac * 1.1)}
    ause = {"rmse": {"aleatoric": 0.2}}
    _check_png(plots.sparsification_plot(sp, oracle, tmp_path / "s.png", ause=ause))


def test_example_grid_bool_and_float_errors(tmp_path):
    rng = np.random.default_rng(2)
    n, h, w = 2, 16, 24
    img = rng.integers(0, 255, (n, h, w, 3), dtype=np.uint8)
    pred = rng.integers(0, 255, (n, h, w, 3), dtype=np.uint8)
    err = rng.random((n, h, w)) > 0.7
    valid = rng.random((n, h, w)) > 0.1
    alea, epi = rng.random((n, h, w)), rng.random((n, h, w)) * 0.1
    _check_png(plots.example_grid(img, pred, err, alea, epi, tmp_path / "e.png", valid=valid))
    _check_png(plots.example_grid(img, pred, rng.random((n, h, w)), alea, epi, tmp_path / "d.png"))
    with pytest.raises(ValueError):
        plots.example_grid(img[:0], pred[:0], err[:0], alea[:0], epi[:0], tmp_path / "x.png")


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    fig = plots._figure(2, 2)
    fig.subplots().plot([0, 1])

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(fig, "savefig", boom)
    with pytest.raises(OSError):
        plots.save_figure(fig, tmp_path / "f.png")
    assert list(tmp_path.iterdir()) == []
