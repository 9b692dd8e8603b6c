"""Per-frame image building blocks: label colouring, heatmaps, colour bars, legends, panels.

Everything works on uint8 RGB numpy arrays and is cheap enough to run on every video frame:
colormaps are 256-entry lookup tables sampled once from matplotlib (no figure per frame) and
text is drawn with ``cv2.putText``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)


@functools.lru_cache(maxsize=16)
def colormap_lut(cmap: str = "inferno") -> np.ndarray:
    """(256, 3) uint8 RGB table of a matplotlib colormap; index 0 is the low end."""
    import matplotlib

    try:
        cm = matplotlib.colormaps[cmap]
    except KeyError:
        raise ValueError(f"unknown matplotlib colormap {cmap!r}") from None
    rgba = cm(np.linspace(0.0, 1.0, 256))
    lut = np.round(rgba[:, :3] * 255.0).astype(np.uint8)
    lut.setflags(write=False)
    return lut


def palette_lut(palette: Sequence[Sequence[int]]) -> np.ndarray:
    """(256, 3) uint8 table: row c is the colour of class c; rows past the palette are black,
    so the ignore label 255 (and any unknown id) shows as black."""
    lut = np.zeros((256, 3), np.uint8)
    pal = np.asarray(palette, dtype=np.int64).reshape(-1, 3)[:255]
    lut[: len(pal)] = np.clip(pal, 0, 255)
    return lut


def colorize_labels(label: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """Label map (H, W) of class ids -> uint8 RGB (H, W, 3); 255 / out-of-range ids -> black."""
    lab = np.asarray(label)
    idx = np.where((lab >= 0) & (lab < 256), lab, 255).astype(np.uint8)
    return palette_lut(palette)[idx]


def blend(
    image: np.ndarray, colour: np.ndarray, alpha: float = 0.5, mask: np.ndarray | None = None
) -> np.ndarray:
    """``(1 - alpha) * image + alpha * colour`` as uint8; where ``mask`` is False the image is kept
    (e.g. ignore pixels). ``colour`` may be an (H, W, 3) array or one RGB triple."""
    img = np.asarray(image, np.float32)
    col = np.broadcast_to(np.asarray(colour, np.float32), img.shape)
    out = img * (1.0 - alpha) + col * alpha
    if mask is not None:
        out = np.where(np.asarray(mask, bool)[..., None], out, img)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def heatmap(values: np.ndarray, vmin: float, vmax: float, cmap: str = "inferno") -> np.ndarray:
    """Float map (H, W) -> uint8 RGB (H, W, 3), linear between vmin and vmax (clipped).

    NaN/inf pixels take the colour of vmin. The same vmin/vmax on every frame keeps a video's
    colours comparable over time.
    """
    v = np.asarray(values, np.float32)
    span = float(vmax) - float(vmin)
    scale = 255.0 / span if span > 0 else 0.0
    t = (v - float(vmin)) * scale
    t = np.nan_to_num(t, nan=0.0, posinf=255.0, neginf=0.0)
    idx = np.clip(t + 0.5, 0, 255).astype(np.uint8)
    return colormap_lut(cmap)[idx]


def format_tick(v: float) -> str:
    """Short tick label: 3 significant digits, scientific only for very small/large values."""
    if v == 0:
        return "0"
    if abs(v) < 1e-2 or abs(v) >= 1e4:
        return f"{v:.1e}".replace("e-0", "e-").replace("e+0", "e")
    return f"{v:.3g}"


def _font_scale(h: int) -> float:
    # Hershey simplex is ~22 px tall at scale 1; aim for ~1/28 of the panel height, readable
    # on 120-px thumbnails and not huge on 720p frames.
    return float(np.clip(h / 28.0 / 22.0 * 1.6, 0.28, 0.9))


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float, colour=WHITE) -> None:
    """White text with a 1-px dark outline so it reads on any background."""
    thick = 1 if scale < 0.6 else 2
    cv2.putText(img, text, org, FONT, scale, BLACK, thick + 2, cv2.LINE_AA)
    cv2.putText(img, text, org, FONT, scale, colour, thick, cv2.LINE_AA)


def _shade(img: np.ndarray, x0: int, y0: int, x1: int, y1: int, alpha: float = 0.55) -> None:
    """Darken a rectangle so text and bars drawn on it read over any heatmap."""
    x0, y0 = max(x0, 0), max(y0, 0)
    region = img[y0:y1, x0:x1]
    region[:] = (region.astype(np.float32) * (1.0 - alpha)).astype(np.uint8)


def draw_colorbar(
    panel: np.ndarray,
    vmin: float,
    vmax: float,
    cmap: str = "inferno",
    label: str = "",
    ticks: int = 3,
) -> np.ndarray:
    """Draw a vertical colour bar with tick labels at the right edge of ``panel`` (in place).

    The bar spans about 70% of the panel height, high values at the top. Returns ``panel``.
    """
    h, w = panel.shape[:2]
    fs = _font_scale(h)
    bar_w = max(4, w // 40)
    top = max(int(h * 0.15), 4)
    bottom = h - max(int(h * 0.08), 3)
    if bottom - top < 8:
        return panel
    tick_txt = [format_tick(vmin + (vmax - vmin) * i / max(ticks - 1, 1)) for i in range(ticks)]
    txt_w = max(cv2.getTextSize(t, FONT, fs, 1)[0][0] for t in tick_txt)
    x1 = w - 3 - txt_w - 3
    x0 = max(x1 - bar_w, 0)
    lab_h = cv2.getTextSize(label or "0", FONT, fs, 1)[0][1]
    _shade(panel, x0 - 3, max(top - lab_h - 8, 0), w, min(bottom + 4, h))
    # Bar colours: row 0 (top) is the top of the colormap.
    ramp = colormap_lut(cmap)[np.linspace(255, 0, bottom - top).round().astype(np.int64)]
    panel[top:bottom, x0:x1] = ramp[:, None, :]
    cv2.rectangle(panel, (x0 - 1, top - 1), (x1, bottom), WHITE, 1)
    for i, t in enumerate(tick_txt):
        y = int(round(bottom - 1 - (bottom - top - 1) * i / max(ticks - 1, 1)))
        cv2.line(panel, (x1, y), (x1 + 2, y), WHITE, 1)
        th = cv2.getTextSize(t, FONT, fs, 1)[0][1]
        yy = int(np.clip(y + th // 2, th + 1, h - 2))
        _text(panel, t, (x1 + 3, yy), fs)
    if label:
        lw, lh = cv2.getTextSize(label, FONT, fs, 1)[0]
        _text(panel, label, (max(w - lw - 3, 0), max(top - 4, lh + 1)), fs)
    return panel


def draw_legend(
    panel: np.ndarray,
    class_names: Sequence[str],
    palette: Sequence[Sequence[int]],
    present: Iterable[int] | None = None,
) -> np.ndarray:
    """Draw colour swatches and class names at the top-left of ``panel`` (in place).

    ``present``: the class ids to list (e.g. those visible in the frame); None lists all.
    Entries that don't fit the panel height flow into further columns. Returns ``panel``.
    """
    h, w = panel.shape[:2]
    ids = list(range(len(class_names))) if present is None else sorted(set(int(c) for c in present))
    ids = [c for c in ids if 0 <= c < len(class_names)]
    if not ids:
        return panel
    fs = _font_scale(h) * 0.9
    th = cv2.getTextSize("Ag", FONT, fs, 1)[0][1]
    row = th + 4
    sw = th + 1
    col_w = sw + 4 + max(cv2.getTextSize(class_names[c], FONT, fs, 1)[0][0] for c in ids) + 6
    per_col = max((h - 4) // row, 1)
    n_cols = -(-len(ids) // per_col)
    _shade(panel, 0, 0, min(3 + n_cols * col_w, w), min(4 + min(len(ids), per_col) * row, h))
    for k, c in enumerate(ids):
        col, r = divmod(k, per_col)
        x = 3 + col * col_w
        y = 3 + r * row
        if x + sw >= w:
            break
        colour = tuple(int(v) for v in np.asarray(palette[c]).tolist()[:3])
        cv2.rectangle(panel, (x, y), (x + sw, y + sw), colour, -1)
        cv2.rectangle(panel, (x, y), (x + sw, y + sw), WHITE, 1)
        _text(panel, class_names[c], (x + sw + 4, y + sw), fs)
    return panel


def legend_strip(
    class_names: Sequence[str], palette: Sequence[Sequence[int]], width: int, panel_height: int
) -> np.ndarray:
    """A legend of every class as a black strip ``width`` wide, to sit below composed panels
    (outside the images, so it hides nothing). Swatches and names run left to right and wrap;
    the strip's height depends only on the names, ``width`` and ``panel_height`` (the same for
    every frame of a video) and is even. Returns uint8 (h, width, 3)."""
    fs = _font_scale(panel_height) * 0.9
    th = cv2.getTextSize("Ag", FONT, fs, 1)[0][1]
    row, sw = th + 6, th + 1
    entries = [sw + 4 + cv2.getTextSize(n, FONT, fs, 1)[0][0] + 10 for n in class_names]
    spots, x, y = [], 4, 0
    for e in entries:
        if x + e > width and x > 4:
            x, y = 4, y + 1
        spots.append((x, y))
        x += e
    h = (y + 1) * row + 4
    strip = np.zeros((h + h % 2, width, 3), np.uint8)
    for c, (x, r) in enumerate(spots):
        y0 = 3 + r * row
        colour = tuple(int(v) for v in np.asarray(palette[c]).tolist()[:3])
        cv2.rectangle(strip, (x, y0), (x + sw, y0 + sw), colour, -1)
        cv2.rectangle(strip, (x, y0), (x + sw, y0 + sw), WHITE, 1)
        _text(strip, class_names[c], (x + sw + 4, y0 + sw), fs)
    return strip


def title_height(panel_height: int) -> int:
    """Height of the title strip composed above a panel (even, so video sizes stay even)."""
    return int(max(14, round(panel_height / 12 / 2) * 2))


def _with_title(panel: np.ndarray, title: str, strip_h: int) -> np.ndarray:
    h, w = panel.shape[:2]
    out = np.zeros((h + strip_h, w, 3), np.uint8)
    out[strip_h:] = panel
    if title:
        fs = _font_scale(max(h, strip_h * 12)) * 0.95
        fs = min(fs, strip_h / 22.0 * 0.9)
        tw, th = cv2.getTextSize(title, FONT, fs, 1)[0]
        x = max((w - tw) // 2, 2)
        strip = out[:strip_h]  # a view: descenders are clipped at the strip, not drawn on the panel
        cv2.putText(strip, title, (x, (strip_h + th) // 2), FONT, fs, WHITE, 1, cv2.LINE_AA)
    return out


def compose_panels(
    panels: Sequence[np.ndarray], titles: Sequence[str] | None = None, layout: str = "row"
) -> np.ndarray:
    """Put equally sized uint8 RGB panels side by side, each under a title strip.

    layout "row": one row (width = n * W, height = H + title strip); "grid": 2 columns
    (a 2x2 grid for 4 panels; a missing last cell is black).
    """
    if not panels:
        raise ValueError("compose_panels needs at least one panel")
    h, w = panels[0].shape[:2]
    for p in panels:
        if p.shape[:2] != (h, w):
            raise ValueError(f"panel sizes differ: {p.shape[:2]} vs {(h, w)}")
    titles = list(titles) if titles is not None else [""] * len(panels)
    strip = title_height(h)
    cells = [_with_title(np.asarray(p, np.uint8), t, strip) for p, t in zip(panels, titles)]
    if layout == "row":
        return np.concatenate(cells, axis=1)
    if layout != "grid":
        raise ValueError(f"unknown layout {layout!r}; expected row or grid")
    cols = 2 if len(cells) > 1 else 1
    while len(cells) % cols:
        cells.append(np.zeros_like(cells[0]))
    rows = [np.concatenate(cells[i : i + cols], axis=1) for i in range(0, len(cells), cols)]
    return np.concatenate(rows, axis=0)


def contact_sheet(
    frames: Sequence[np.ndarray], cols: int = 3, labels: Sequence[str] | None = None, gap: int = 4
) -> np.ndarray:
    """Tile frames (resized to the first frame's size) into a grid ``cols`` wide with ``gap``
    pixels of black between them; with ``labels``, each tile gets its label in a strip of its
    own above it (drawn over the frame it would hide a title or the class legend)."""
    if not frames:
        raise ValueError("contact_sheet needs at least one frame")
    h, w = frames[0].shape[:2]
    cols = max(1, min(cols, len(frames)))
    rows = -(-len(frames) // cols)
    lh = title_height(min(h, 360)) if labels is not None else 0
    th = lh + h  # one tile with its label strip
    sheet = np.zeros((rows * th + (rows - 1) * gap, cols * w + (cols - 1) * gap, 3), np.uint8)
    for k, f in enumerate(frames):
        if f.shape[:2] != (h, w):
            f = cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA)
        r, c = divmod(k, cols)
        tile = sheet[r * (th + gap) : r * (th + gap) + th, c * (w + gap) : c * (w + gap) + w]
        tile[lh:] = f
        if lh and k < len(labels) and labels[k]:
            fs = min(_font_scale(min(h, 360)), lh / 22.0 * 0.9)
            _text(tile, labels[k], (4, lh - max(2, lh // 5)), fs)
    return sheet


def heatmap_panel(
    values: np.ndarray, vmin: float, vmax: float, cmap: str = "inferno", label: str = ""
) -> np.ndarray:
    """Heatmap with its colour bar (the usual uncertainty panel)."""
    return draw_colorbar(heatmap(values, vmin, vmax, cmap), vmin, vmax, cmap, label)


def depth_panel(
    depth: np.ndarray, vmin: float, vmax: float, cmap: str = "turbo_r", label: str = "m"
) -> np.ndarray:
    """Depth map in metres on a fixed scale (near = warm with the default colormap) with a
    colour bar whose ticks are metres."""
    return heatmap_panel(depth, vmin, vmax, cmap, label)


def segmentation_panel(
    image: np.ndarray,
    pred: np.ndarray,
    class_names: Sequence[str],
    palette: Sequence[Sequence[int]],
    alpha: float = 0.55,
    legend: bool = True,
) -> np.ndarray:
    """Predicted classes blended over the image, with a legend of the classes present."""
    out = blend(image, colorize_labels(pred, palette), alpha)
    if legend:
        draw_legend(out, class_names, palette, present=np.unique(pred).tolist())
    return out
