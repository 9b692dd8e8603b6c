import numpy as np
import pytest

from seguncert.data.common import CAMVID_PALETTE
from seguncert.errors import ConfigError
from seguncert.viz.overlays import (
    blend,
    colorize_labels,
    colormap_lut,
    compose_panels,
    contact_sheet,
    depth_panel,
    draw_colorbar,
    draw_legend,
    format_tick,
    heatmap,
    legend_strip,
    segmentation_panel,
    title_height,
)
from seguncert.viz.panels import PanelRenderer, Scales, frame_stats, result_maps, stats_header


def test_colorize_labels_uses_palette_and_blacks_out_ignore():
    label = np.array([[0, 3, 255], [10, 8, 200]])
    rgb = colorize_labels(label, CAMVID_PALETTE[:11])
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == CAMVID_PALETTE[0]
    assert tuple(rgb[0, 1]) == CAMVID_PALETTE[3]
    assert tuple(rgb[1, 0]) == CAMVID_PALETTE[10]
    assert tuple(rgb[0, 2]) == (0, 0, 0)  # ignore label
    assert tuple(rgb[1, 2]) == (0, 0, 0)  # id beyond the palette


def test_blend_alpha_and_mask():
    img = np.full((2, 2, 3), 100, np.uint8)
    col = np.full((2, 2, 3), 200, np.uint8)
    assert (blend(img, col, 0.0) == 100).all()
    assert (blend(img, col, 1.0) == 200).all()
    assert (blend(img, col, 0.5) == 150).all()
    mask = np.array([[True, False], [False, True]])
    out = blend(img, (0, 0, 0), 1.0, mask=mask)
    assert (out[0, 0] == 0).all() and (out[0, 1] == 100).all()


def test_heatmap_follows_the_colormap_monotonically():
    lut = colormap_lut("inferno").astype(np.int64)
    ramp = np.linspace(-1.0, 3.0, 500, dtype=np.float32)[None, :]
    rgb = heatmap(ramp, 0.0, 2.0, "inferno").astype(np.int64)
    assert (
        rgb.shape == (1, 500, 3) and (rgb[0, 0] == lut[0]).all() and (rgb[0, -1] == lut[255]).all()
    )
    # Every output colour is a LUT entry, at a LUT position that never decreases along the ramp.
    idx = [int(np.argmin(((lut - c) ** 2).sum(1))) for c in rgb[0]]
    assert all((lut[i] == c).all() for i, c in zip(idx, rgb[0]))
    assert np.all(np.diff(idx) >= 0) and idx[0] == 0 and idx[-1] == 255
    mid = heatmap(np.array([[1.0]]), 0.0, 2.0, "inferno")[0, 0]
    assert abs(int(np.argmin(((lut - mid.astype(np.int64)) ** 2).sum(1))) - 128) <= 1
    nan = heatmap(np.array([[np.nan]]), 0.0, 1.0, "inferno")[0, 0]
    assert (nan == lut[0]).all()


def test_colorbar_is_drawn_on_the_right_only():
    panel = np.zeros((120, 160, 3), np.uint8)
    out = draw_colorbar(panel, 0.0, 2.5, "viridis", "nats")
    assert out is panel
    changed = np.nonzero(panel.any(axis=2))
    assert changed[1].min() > 80  # nothing drawn over the left half
    lut = colormap_lut("viridis")
    cols = set(map(tuple, panel.reshape(-1, 3)))
    assert tuple(lut[255]) in cols and tuple(lut[0]) in cols
    # The top colour of the bar sits above its bottom colour.
    top_y = np.nonzero((panel == lut[255]).all(axis=2))[0].mean()
    bot_y = np.nonzero((panel == lut[0]).all(axis=2))[0].mean()
    assert top_y < bot_y


def test_legend_lists_present_classes_only():
    names = ["sky", "road", "car"]
    pal = [(10, 200, 30), (200, 10, 30), (30, 10, 200)]
    panel = np.full((120, 160, 3), 128, np.uint8)
    draw_legend(panel, names, pal, present=[0, 2])
    cols = set(map(tuple, panel.reshape(-1, 3)))
    assert pal[0] in cols and pal[2] in cols and pal[1] not in cols


def test_legend_strip_lists_every_class_and_keeps_its_height():
    names = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree"]
    pal = [(10 * i + 5, 200 - 20 * i, 30 + 15 * i) for i in range(len(names))]
    wide = legend_strip(names, pal, 640, 120)
    narrow = legend_strip(names, pal, 160, 120)
    assert wide.shape[1] == 640 and narrow.shape[1] == 160
    assert wide.shape[0] % 2 == 0 and narrow.shape[0] > wide.shape[0]  # wraps when narrow
    for strip in (wide, narrow):
        cols = set(map(tuple, strip.reshape(-1, 3)))
        assert all(tuple(c) in cols for c in pal)
    assert legend_strip(names, pal, 640, 120).shape == wide.shape  # same for every frame


def test_compose_panels_row_and_grid():
    a = np.zeros((40, 60, 3), np.uint8)
    th = title_height(40)
    row = compose_panels([a, a, a, a], ["a", "b", "c", "d"])
    assert row.shape == (40 + th, 240, 3)
    grid = compose_panels([a, a, a, a], ["a", "b", "c", "d"], layout="grid")
    assert grid.shape == (2 * (40 + th), 120, 3)
    odd = compose_panels([a, a, a], None, layout="grid")
    assert odd.shape == (2 * (40 + th), 120, 3)
    assert row[:th].any()  # title text drawn in the strip
    with pytest.raises(ValueError):
        compose_panels([a, np.zeros((41, 60, 3), np.uint8)])


def test_contact_sheet_grid_shape():
    frames = [np.full((30, 50, 3), i * 40, np.uint8) for i in range(5)]
    sheet = contact_sheet(frames, cols=2, gap=4)
    assert sheet.shape == (3 * 30 + 2 * 4, 2 * 50 + 4, 3)
    assert (sheet[0, 0] == 0).all() and (sheet[0, 54] == 40).all()
    # labels go in a strip above each tile: the frames' own pixels stay untouched
    labelled = contact_sheet(frames, cols=2, labels=[f"frame {i}" for i in range(5)], gap=4)
    lh = title_height(30)
    assert labelled.shape == (3 * (lh + 30) + 2 * 4, 2 * 50 + 4, 3)
    assert labelled[:lh, :50].max() > 0  # the label is drawn
    assert (labelled[lh : lh + 30, 54:] == 40).all()  # tile 1 intact below its label


def test_depth_panel_metres_scale():
    depth = np.tile(np.linspace(0.1, 10.0, 160, dtype=np.float32), (120, 1))
    out = depth_panel(depth, 0.1, 10.0, cmap="turbo_r")
    lut = colormap_lut("turbo_r")
    assert out.shape == (120, 160, 3)
    assert (out[60, 0] == lut[0]).all()  # nearest depth -> low end of the colormap
    assert format_tick(10.0) == "10" and format_tick(0.0012) == "1.2e-3"


def test_panel_renderer_and_stats_for_segmentation():
    h, w = 48, 64
    rng = np.random.default_rng(0)
    res = {
        "aleatoric": rng.random((h, w)).astype(np.float32),
        "epistemic": rng.random((h, w)).astype(np.float32) * 0.1,
        "entropy": rng.random((h, w)).astype(np.float32),
    }
    maps = result_maps(res, "segmentation")
    scales = Scales.calibrate([maps], {}, "segmentation")
    assert scales.ranges["epistemic"][0] == 0.0
    assert scales.ranges["epistemic"][1] == pytest.approx(np.percentile(maps["epistemic"], 99))
    assert scales.threshold == pytest.approx(np.percentile(maps["epistemic"], 90))
    fixed = Scales.calibrate([maps], {}, "segmentation", fixed=(0.0, 0.5), threshold=0.05)
    assert fixed.ranges["aleatoric"] == (0.0, 0.5) and fixed.threshold == 0.05
    meta = {"class_names": ["a", "b", "c"], "palette": [[255, 0, 0], [0, 255, 0], [0, 0, 255]]}
    pred = np.zeros((h, w), np.int64)
    pred[:, : w // 4] = 2
    render = PanelRenderer("segmentation", ["input", "seg", "aleatoric", "epistemic"], meta, scales)
    frame = render(np.zeros((h, w, 3), np.uint8), maps, pred)
    strip = legend_strip(meta["class_names"], meta["palette"], 4 * w, h)
    assert frame.shape == (h + title_height(h) + strip.shape[0], 4 * w, 3)
    assert np.array_equal(frame[-strip.shape[0] :], strip)  # the legend sits below the panels
    seg_cell = frame[title_height(h) : title_height(h) + h, w : 2 * w]
    plain = segmentation_panel(np.zeros((h, w, 3), np.uint8), pred, meta["class_names"],
                               meta["palette"], legend=False)  # fmt: skip
    assert np.array_equal(seg_cell, plain)  # nothing drawn over the segmentation itself
    row = frame_stats(7, maps, pred, "segmentation", meta["class_names"], scales.threshold)
    assert len(row) == len(stats_header("segmentation", meta["class_names"]))
    assert row[0] == 7 and row[4:] == pytest.approx([0.75, 0.0, 0.25])
    with pytest.raises(ConfigError, match="depth"):
        PanelRenderer("segmentation", ["input", "depth"], meta, scales)


def test_novelty_map_scale_and_statistics():
    """The novelty map keeps its own [0, p99] range under --scale fixed (that is in nats), is
    drawn as a panel, and adds its mean and maximum to the CSV row."""
    h, w = 16, 20
    rng = np.random.default_rng(1)
    res = {k: rng.random((h, w)).astype(np.float32) for k in ("aleatoric", "epistemic", "entropy")}
    res["novelty"] = (rng.standard_normal((h, w)) * 3).astype(np.float32)
    maps = result_maps(res, "segmentation")
    scales = Scales.calibrate([maps], {}, "segmentation", fixed=(0.0, 0.5))
    assert scales.ranges["aleatoric"] == (0.0, 0.5)
    assert scales.ranges["novelty"] == pytest.approx((0.0, np.percentile(maps["novelty"], 99)))
    meta = {"class_names": ["a", "b"], "palette": [[255, 0, 0], [0, 255, 0]]}
    render = PanelRenderer("segmentation", ["input", "novelty"], meta, scales)
    assert render.titles() == ["input", "novelty"]
    assert render(np.zeros((h, w, 3), np.uint8), maps, None).shape[1] == 2 * w
    pred = np.zeros((h, w), np.int64)
    row = frame_stats(0, maps, pred, "segmentation", meta["class_names"], scales.threshold)
    header = stats_header("segmentation", meta["class_names"], novelty=True)
    assert len(row) == len(header) and header[-2:] == ["mean_novelty", "max_novelty"]
    assert row[-2:] == pytest.approx([maps["novelty"].mean(), maps["novelty"].max()])


def test_depth_maps_are_standard_deviations():
    var = np.full((4, 4), 0.25, np.float32)
    res = {"depth": var + 1, "aleatoric_var": var, "epistemic_var": var * 4, "total_var": var * 5}
    maps = result_maps(res, "depth")
    assert maps["depth_aleatoric"] == pytest.approx(np.full((4, 4), 0.5))
    assert maps["depth_epistemic"] == pytest.approx(np.full((4, 4), 1.0))
    scales = Scales.calibrate([maps], {"min_depth": 0.5, "max_depth": 20.0}, "depth")
    assert scales.ranges["depth"] == (0.5, 20.0)
