"""Render the built-in synthetic street scenes: a contact sheet, a video, or a speed benchmark.

python tools/render_synthetic.py                      # docs/synthetic_contact_sheet.png
python tools/render_synthetic.py --video out.mp4 --frames 100 [--fog 3] [--ood] [--panels]
python tools/render_synthetic.py --bench              # frames/s at 240x320 (use 1 thread)
"""

from __future__ import annotations

import argparse
import io
import os
import time
from pathlib import Path

import cv2
import numpy as np

from ..data.common import CAMVID_PALETTE, IGNORE_INDEX
from ..data.synthetic import render_frame, render_sequence
from ..errors import DataError
from ..io.atomic import atomic_write_bytes
from ..io.video_writer import AtomicVideoWriter

PALETTE = np.array(CAMVID_PALETTE, np.uint8)  # row 11 (black) shows void / OOD


def colour_label(label: np.ndarray) -> np.ndarray:
    return PALETTE[np.where(label == IGNORE_INDEX, 11, label)]


def colour_depth(depth: np.ndarray) -> np.ndarray:
    """Inverse-depth colour map (near bright), RGB."""
    inv = np.clip(2.0 / np.maximum(depth, 0.5), 0, 1) ** 0.6
    return cv2.applyColorMap((inv * 255).astype(np.uint8), cv2.COLORMAP_MAGMA)[..., ::-1]


def caption(tile: np.ndarray, text: str) -> np.ndarray:
    out = np.ascontiguousarray(tile)
    cv2.putText(out, text, (4, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 2, cv2.LINE_AA)
    cv2.putText(out, text, (4, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def box(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Draw a magenta box around the mask's pixels."""
    out = np.ascontiguousarray(image.copy())
    rows, cols = np.nonzero(mask)
    if rows.size:
        top_left, bottom_right = (cols.min() - 2, rows.min() - 2), (cols.max() + 2, rows.max() + 2)
        cv2.rectangle(
            out,
            (int(top_left[0]), int(top_left[1])),
            (int(bottom_right[0]), int(bottom_right[1])),
            (255, 0, 255),
            1,
        )
    return out


def contact_sheet(seeds: list[int], size: tuple[int, int]) -> np.ndarray:
    """Rows: image | label | depth | a variant (fog 3, OOD animal, night 3, motion blur 3)."""
    variants = [("fog", 3), ("ood", 0), ("night", 3), ("motion_blur", 3)]
    rows = []
    for i, seed in enumerate(seeds):
        s = render_frame(seed, size)
        kind, sev = variants[i % len(variants)]
        if kind == "ood":
            v = render_frame(seed, size, ood=True)
            var = caption(box(v["image"], v["ood"]), "OOD animal (boxed)")
        else:
            var = caption(
                render_frame(seed, size, shift=kind, severity=sev)["image"], f"{kind} {sev}"
            )
        rows.append(
            np.hstack(
                [
                    caption(s["image"], f"seed {seed}"),
                    caption(colour_label(s["label"]), "label"),
                    caption(colour_depth(s["depth"]), "depth"),
                    var,
                ]
            )
        )
    return np.vstack(rows)


def write_png(path: Path, rgb: np.ndarray) -> None:
    """Write an optimised PNG (256-colour palette: the sheet stays well under 300 KB)."""
    from PIL import Image  # pillow comes with matplotlib

    img = Image.fromarray(np.ascontiguousarray(rgb)).quantize(256, dither=Image.Dither.NONE)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    atomic_write_bytes(path, buf.getvalue())


def write_video(path: Path, args, size: tuple[int, int]) -> int:
    shifts = {"fog": args.fog} if args.fog else {}
    if args.night:
        shifts["night"] = args.night
    ood = range(args.frames // 3, args.frames) if args.ood else None
    h, w = size
    seq = render_sequence(
        args.frames,
        size,
        seed=args.seed,
        fps=args.fps,
        speed=args.speed,
        shifts=shifts,
        ood_frames=ood,
    )
    n = 0
    with AtomicVideoWriter(path, args.fps, (h, 3 * w if args.panels else w)) as writer:
        for s in seq:
            img = s["image"]
            if args.panels:
                img = np.hstack([img, colour_label(s["label"]), colour_depth(s["depth"])])
            writer.write(img)
            n += 1
    return n


def bench(size: tuple[int, int], frames: int) -> float:
    for seed in range(3):
        render_frame(seed, size)  # warm caches (noise tiles)
    start = time.process_time()
    for seed in range(frames):
        render_frame(1000 + seed, size)
    return frames / (time.process_time() - start)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="render_synthetic.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--out", type=Path, default=Path("docs/synthetic_contact_sheet.png"))
    ap.add_argument(
        "--size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        default=None,
        help="tile / frame size (default 120 160; 240 320 for --bench)",
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[3, 7, 11, 21])
    ap.add_argument("--video", type=Path, help="write a driving sequence to this .mp4 instead")
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--fps", type=float, default=10.0)
    ap.add_argument("--speed", type=float, default=8.0, help="camera speed in m/s")
    ap.add_argument("--seed", type=int, default=0, help="street of the video")
    ap.add_argument("--fog", type=int, default=0, choices=range(6), help="fog severity 1..5")
    ap.add_argument("--night", type=int, default=0, choices=range(6), help="night severity 1..5")
    ap.add_argument("--ood", action="store_true", help="an animal on the road from 1/3 in")
    ap.add_argument("--panels", action="store_true", help="video frames show image|label|depth")
    ap.add_argument("--bench", action="store_true", help="print single-core frames/s and exit")
    args = ap.parse_args(argv)
    if args.frames < 1:
        raise DataError(f"--frames must be >= 1, got {args.frames}")
    if args.bench:
        size = tuple(args.size or (240, 320))
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        fps = bench(size, args.frames if args.frames != 100 else 60)
        print(f"{fps:.1f} frames/s at {size[0]}x{size[1]} (CPU time of this process, 1 thread)")
        return 0
    size = tuple(args.size or (120, 160))
    if args.video:
        n = write_video(args.video, args, size)
        print(
            f"wrote {args.video} ({n} frames, {size[0]}x{size[1]}, "
            f"fog={args.fog} night={args.night} ood={args.ood})"
        )
        return 0
    sheet = contact_sheet(args.seeds, size)
    write_png(args.out, sheet)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB, {len(args.seeds)} rows)")
    return 0
