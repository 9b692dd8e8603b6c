#!/usr/bin/env python
"""Run a checkpoint on videos / frame folders / images and write uncertainty overlay videos.

Each output frame is a row of panels, by checkpoint kind:
  segmentation: input | fused segmentation over the input, with a class legend |
                aleatoric (expected entropy, nats) | epistemic (mutual information, nats)
  depth:        input | depth (m) | aleatoric σ (m) | epistemic σ (m)
  joint:        input | segmentation | depth (m) | epistemic (segmentation MI, nats)
Colour scales are fixed for a whole video: a calibration pass over 8 frames spread through it
takes the 99th percentile of each uncertainty map (or --scale fixed:LO,HI); depth uses the
checkpoint's [min_depth, max_depth]. The checkpoint's fitted temperature is applied.

Panels (--panels): input, seg, aleatoric, epistemic, entropy (total); depth, depth_aleatoric,
depth_epistemic, depth_total (σ in m). For depth checkpoints aleatoric/epistemic/entropy are the
depth σ maps. --temporal K (TemporalMC, batch 1) runs K fresh samples per frame and fuses them
with a decayed history of earlier frames' samples (--flow warps it along the optical flow).
The 'uncertain' threshold of the statistics defaults to the 90th percentile of the epistemic map
over the calibration frames (--uncertain-threshold overrides it).

Outputs: one input with --out ending .mp4/.avi writes that file (.avi: MJPG, else mp4v);
otherwise --out is a folder holding <name>.mp4 per input. Beside each video: <name>.csv
(per-frame statistics: mean aleatoric, mean epistemic, fraction of pixels whose epistemic value
exceeds the 'uncertain' threshold, class fractions) and <name>_sheet.png (contact sheet of 6
frames), unless --stats / --contact-sheet say otherwise (folders when there are several inputs).
Every file is written atomically. Under torchrun the inputs are shared out across ranks
(input i goes to rank i % WORLD_SIZE), each rank on cuda:LOCAL_RANK when CUDA is available.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

# Run from a checkout without installing: make the package beside tools/ importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seguncert.errors import CheckpointError, SeguncertError, run_cli
from seguncert.video import (
    FrameReader,
    atomic_write_bytes,
    check_writable,
    iter_inputs,
    write_image,
)
from seguncert.viz.overlays import contact_sheet
from seguncert.viz.panels import (
    DEFAULT_PANELS,
    PanelRenderer,
    Scales,
    calibrate_video,
    overlay_video,
    predict_frames,
    stats_header,
)

FLAGS = [  # (flag, argparse keywords, help)
    ("--checkpoint", dict(required=True), "run folder (takes best) or a checkpoint .json"),
    ("--input", dict(required=True, nargs="+"), "video files, frame folders, images or globs"),
    ("--out", dict(default="out"), "output .mp4/.avi (one input) or a folder (default: out/)"),
    ("--mc-samples", dict(type=int, default=20), "MC dropout samples T per frame (default 20)"),
    ("--size", {}, "resize frames to HxW first, e.g. 360x480 (default: native size)"),
    ("--panels", {}, "comma-separated panel names (default per kind; list above)"),
    ("--layout", dict(choices=("row", "grid"), default="row"), "one row, or a 2x2 grid"),
    ("--frames-dir", {}, "also write every composed frame as a PNG in this folder"),
    ("--stats", {}, "per-frame statistics CSV (default: <video>.csv)"),
    ("--contact-sheet", {}, "contact sheet PNG of 6 frames (default: <video>_sheet.png)"),
    ("--temporal", dict(type=int, default=0), "K fresh samples/frame fused with history (0: off)"),
    ("--flow", dict(action="store_true"), "with --temporal: warp the history along the flow"),
    ("--batch", dict(type=int), "frames per forward pass (default 4 on CPU, 16 on GPU)"),
    ("--memory-budget-mb", dict(type=float, default=1024.0), "bound on one MC suffix chunk (MB)"),
    ("--scale", dict(default="calib"), "uncertainty colours: calib (default) or fixed:LO,HI"),
    ("--uncertain-threshold", dict(type=float), "epistemic cut-off of frac_uncertain (--stats)"),
    ("--seed", dict(type=int, default=0), "seed of the dropout masks (default 0)"),
    ("--device", dict(default="auto"), "auto | cpu | cuda | cuda:N (auto: cuda:LOCAL_RANK if any)"),
]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    for flag, kw, text in FLAGS:
        p.add_argument(flag, help=text, **kw)
    args = p.parse_args(argv)
    if args.mc_samples < 1 or args.temporal < 0 or (args.batch is not None and args.batch < 1):
        p.error("--mc-samples and --batch must be >= 1, --temporal >= 0")
    return args


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
        assert h > 0 and w > 0
    except (ValueError, AssertionError):
        raise SeguncertError(f"--size must look like HxW (e.g. 360x480), got {text!r}") from None
    return h, w


def parse_scale(text: str) -> tuple[float, float] | None:
    if text == "calib":
        return None
    try:
        assert text.startswith("fixed:")
        lo, hi = (float(v) for v in text[6:].split(","))
        assert hi > lo
    except (ValueError, AssertionError):
        raise SeguncertError(
            f"--scale must be calib or fixed:LO,HI (HI > LO), not {text!r}"
        ) from None
    return lo, hi


def output_paths(args, sources) -> list[tuple[Path, Path, Path, str | None]]:
    """(video, stats, sheet, frames_dir) per source, following the rules in the docstring."""
    out, many = Path(args.out), len(sources) > 1
    one_file = out.suffix.lower() in (".mp4", ".avi")
    if many and one_file:
        raise SeguncertError(f"--out {out} names one video but there are {len(sources)} inputs")
    plans = []
    for s in sources:
        video = out if one_file else out / f"{s.name}.mp4"
        base = video.with_suffix("")
        stats = Path(args.stats) / f"{s.name}.csv" if args.stats and many else args.stats
        sheet = args.contact_sheet
        sheet = Path(sheet) / f"{s.name}_sheet.png" if sheet and many else sheet
        fdir = args.frames_dir and str(Path(args.frames_dir) / s.name if many else args.frames_dir)
        plans.append(
            (video, Path(stats or f"{base}.csv"), Path(sheet or f"{base}_sheet.png"), fdir)
        )
    return plans


def run_source(args, src, plan, predict, calib, info, kind, size, panels) -> int:
    video, stats, sheet_path, frames_dir = plan
    meta = info["meta"]
    reader = FrameReader(src, size=size)
    fixed = parse_scale(args.scale)
    scales = calibrate_video(reader, calib, kind, meta, fixed, args.uncertain_threshold, args.batch)
    render = PanelRenderer(kind, panels, meta, scales, args.layout)
    batch = 1 if args.temporal else args.batch
    t0 = time.perf_counter()
    with tqdm(total=reader.frame_count, unit="frame", desc=src.name, disable=None) as bar:
        rows, sheet, done = overlay_video(reader, predict, render, video, batch, frames_dir, bar)
    fps = done / max(time.perf_counter() - t0, 1e-9)
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([stats_header(kind, render.class_names), *rows])
    atomic_write_bytes(stats, buf.getvalue().encode())
    labels = [f"frame {i}" for i, _ in sheet]
    write_image(sheet_path, contact_sheet([f for _, f in sheet], 2, labels))
    extra = f", {frames_dir}/" if frames_dir else ""
    print(f"{src.name}: {done} frames, {fps:.2f} frames/s -> {video}, {stats}, {sheet_path}{extra}")
    return done


def main(argv=None) -> int:
    args = parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    size = parse_size(args.size) if args.size else None
    parse_scale(args.scale)
    sources = iter_inputs(args.input)
    plans = output_paths(args, sources)
    mine = [i for i in range(len(sources)) if i % world == rank]
    # Open every input and check every output location before the (slow) model load.
    for i in mine:
        FrameReader(sources[i], size=size)
        for path in plans[i][:3]:
            check_writable(path)
    import torch

    from seguncert.engine.checkpoint import load_checkpoint
    from seguncert.uncertainty.sampler import MCSampler

    if args.device == "auto":
        args.device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    model, info = load_checkpoint(args.checkpoint, map_location=device)
    kind = info.get("kind")
    if kind not in DEFAULT_PANELS:
        raise CheckpointError(f"{args.checkpoint}: checkpoint kind {kind!r} cannot be rendered")
    panels = args.panels.split(",") if args.panels else list(DEFAULT_PANELS[kind])
    PanelRenderer(kind, panels, info["meta"], Scales({}, 0.0))  # rejects bad --panels
    args.batch = args.batch or (16 if device.type == "cuda" else 4)
    temp = info.get("temperature")  # float, per-class list, or None when not calibrated
    if isinstance(temp, list):
        temp = torch.tensor(temp, dtype=torch.float32)
    temp = 1.0 if temp is None else temp
    opts = dict(memory_budget_mb=args.memory_budget_mb, seed=args.seed)
    sampler = MCSampler(model, samples=args.mc_samples, temperature=temp, **opts)

    def predictor(step):
        return lambda frames: predict_frames(step, frames, info["meta"], device)

    total, t0 = 0, time.perf_counter()
    for i in mine:
        step = sampler
        if args.temporal:  # fresh temporal state per input
            from seguncert.uncertainty.temporal import TemporalMC

            step = TemporalMC(model, args.temporal, flow=args.flow, temperature=temp, **opts)
        calib = predictor(sampler)
        total += run_source(
            args, sources[i], plans[i], predictor(step), calib, info, kind, size, panels
        )
    dt = time.perf_counter() - t0
    print(
        f"done: {total} frames from {len(mine)} input(s) in {dt:.1f} s "
        f"({total / max(dt, 1e-9):.2f} frames/s including calibration)"
    )
    return 0


if __name__ == "__main__":
    run_cli(main)
