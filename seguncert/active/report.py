"""What select_frames writes for a selection: the picked frames as PNGs, a contact sheet of
the picks with their epistemic maps, and the ranked CSV.

Files in the output folder (each written atomically):

- ``picks/<source>_<frame:06d>.png``: each picked frame at its native resolution, as decoded
  (ready for a labelling tool);
- ``contact_sheet.png``: per pick, the frame at the scoring size beside its mutual-information
  map (one colour scale for the sheet: 0 to the 99th percentile over the picks), captioned
  with rank, source, frame, time and score;
- ``picks.csv``: one row per pick in rank order, written last: its presence means the other
  files are complete.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import cv2
import numpy as np

from ..io.atomic import atomic_write_bytes
from ..io.video_reader import FrameReader, Source
from ..io.video_writer import write_image
from ..viz.overlays import compose_panels, contact_sheet, heatmap_panel
from .acquisition import ACQUISITIONS, FrameScore

PICKS_CSV = "picks.csv"
SHEET_PNG = "contact_sheet.png"
PICKS_DIR = "picks"
SHEET_COLS = 2
SHEET_MAX_H = 240  # tiles taller than this are shrunk so a large budget gives a usable sheet


def png_name(record: FrameScore) -> str:
    return f"{record.source}_{record.index:06d}.png"


def csv_header(class_names) -> list[str]:
    return ["rank", "source", "frame", "time_s", "path", "png", "acquisition", "score",
            *ACQUISITIONS, *(f"mi_{c}" for c in class_names)]  # fmt: skip


def _num(v) -> str:
    return "" if v is None else f"{v:.6g}"


def csv_text(picks: list[FrameScore], key: str, class_names) -> str:
    """The picks as CSV (:func:`csv_header`); per-class MI is empty where no pixel was
    predicted as that class; scores in nats (``random`` in [0, 1))."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(csv_header(class_names))
    for rank, r in enumerate(picks, start=1):
        row = [rank, r.source, r.index, _num(r.time_s), r.path, f"{PICKS_DIR}/{png_name(r)}"]
        row += [key, _num(r.scores[key]), *(_num(r.scores[k]) for k in ACQUISITIONS)]
        w.writerow(row + [_num(v) for v in r.class_mi])
    return buf.getvalue()


def read_picked_pngs(csv_path: Path) -> list[Path]:
    """The PNGs an earlier picks.csv names (to remove the stale ones on --overwrite)."""
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error):
        return []
    names = [Path(r.get("png") or "") for r in rows]
    return [csv_path.parent / n for n in names if n.parent.name == PICKS_DIR and n.suffix]


def native_frames(source: Source, indices) -> dict[int, np.ndarray]:
    """Frames ``indices`` of ``source`` at their own resolution: index -> uint8 RGB."""
    wanted = sorted(set(int(i) for i in indices))
    if source.kind == "video":
        return dict(FrameReader(source).read_frames(wanted))
    out = {}
    for i in wanted:
        one = Source("frames", [source.paths[i]], source.name, source.origin)
        out[i] = FrameReader(one).read_frames([0])[0][1]
    return out


def _caption(rank: int, r: FrameScore, key: str) -> tuple[str, str]:
    when = f" ({r.time_s:.1f} s)" if r.time_s is not None else ""
    return f"#{rank} {r.source} frame {r.index}{when}", f"{key} {r.scores[key]:.4g}"


def sheet_image(picks, frames: list[np.ndarray], mis: list[np.ndarray], key: str) -> np.ndarray:
    """Contact sheet: per pick (frame at the scoring size, MI map (H, W) in nats) a tile of
    frame | MI heatmap with a colour bar, under its caption; the MI scale is shared."""
    vmax = float(np.percentile(np.concatenate([m.ravel() for m in mis]), 99))
    vmax = vmax if vmax > 0 else 1e-6
    tiles = []
    for rank, (r, rgb, mi) in enumerate(zip(picks, frames, mis, strict=True), start=1):
        h, w = rgb.shape[:2]
        if h > SHEET_MAX_H:
            size = (round(w * SHEET_MAX_H / h), SHEET_MAX_H)
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
            mi = cv2.resize(mi.astype(np.float32), size, interpolation=cv2.INTER_AREA)
        panels = [np.ascontiguousarray(rgb), heatmap_panel(mi, 0.0, vmax, label="MI")]
        tiles.append(compose_panels(panels, _caption(rank, r, key)))
    return contact_sheet(tiles, SHEET_COLS)


def write_outputs(out: Path, picks, plans: dict, scorer, key: str, class_names) -> None:
    """PNGs, contact sheet, then picks.csv (the module docstring) for ``picks`` in rank order;
    ``plans``: source name -> SourcePlan; ``scorer`` recomputes the picks' maps (the same
    masks as when they were scored, so the same maps)."""
    frames, mis = [], []
    for name in dict.fromkeys(r.source for r in picks):
        plan = plans[name]
        mine = [r for r in picks if r.source == name]
        native = native_frames(plan.source, [r.index for r in mine])
        for r in mine:
            write_image(out / PICKS_DIR / png_name(r), native[r.index])
        scored = dict(FrameReader(plan.source, size=plan.size).read_frames([r.index for r in mine]))
        for r in mine:
            frames.append((r, scored[r.index]))
    order = {id(r): k for k, r in enumerate(picks)}
    frames.sort(key=lambda fr: order[id(fr[0])])
    mis = [scorer.maps(rgb)["epistemic"] for _, rgb in frames]
    write_image(out / SHEET_PNG, sheet_image(picks, [f for _, f in frames], mis, key))
    atomic_write_bytes(out / PICKS_CSV, csv_text(picks, key, class_names).encode())
