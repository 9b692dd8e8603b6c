"""Temporal sample reuse vs per-frame MC sampling on video at 1, 5, 15 and 30 frames/s and across a
hard cut: does the fused epistemic map stay within 1.5x of per-frame sampling's?

Source: CamVid val sorted by name (sequence 0016E5, 15 frames/s), resized to --size (default:
the checkpoint's training size). Rates: 1 and 5 frames/s take every 15th and 3rd frame, 15 the
frames as they are, 30 inserts the midway blend between neighbours; each clip is cut to
--max-clip frames (1 frame/s keeps its 7). The cut clip is the last --cut-frames frames of
0016E5 followed by the first --cut-frames of another CamVid sequence (0006R0 from train; a
synthetic street when train/ is missing). Each frame goes through tools/infer.py's two
predictors, alternating frame by frame so machine load hits both alike: per-frame sampling
(``MCSampler``, T = --samples, the checkpoint's calibrator) and temporal reuse (``TemporalMC``
with K = --temporal fresh samples and its defaults, once per --modes entry: ``plain`` and
``flow``). Per clip it prints the per-frame ratio of mean epistemic (temporal / per-frame; min,
median, max), whether every frame lies within [1/1.5, 1.5], the frames/s of both and the share
of frames that ran ``reset_samples`` (first frames, cuts, frames whose gates dropped much of the
history). Per-frame results are cached across clips (a frame in several clips runs once).

    .venv/bin/python bench/temporal_rates.py --checkpoint runs/camvid_base40 --threads 1 --json
    .venv/bin/python bench/temporal_rates.py --checkpoint runs/camvid_base40 --quick --json
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
from _common import (
    add_common_args,
    describe_machine,
    device_label,
    doc_parser,
    emit_summary,
    parse_hw,
    parse_ints,
    print_table,
    require_camvid,
    setup,
    verdict,
)

from seguncert.errors import ConfigError, run_cli

TOLERANCE = 1.5
STEPS = {1: 15, 5: 3, 15: 1}  # source frames per output frame (the source runs at 15/s)


def _read(files: list[Path], size) -> list[np.ndarray]:
    from seguncert.data.camvid import read_rgb, resize_image

    return [resize_image(read_rgb(f), size) for f in files]


def build_clips(root: Path, size, n_source: int, max_clip: int, cut: int) -> dict[str, list]:
    """{clip name: [(cache key, uint8 RGB frame), ...]} for every rate and the cut."""
    files = sorted((root / "val").glob("*.png"))[:n_source]
    if len(files) < 16:
        raise ConfigError(f"{root / 'val'} has {len(files)} frames; the bench needs >= 16")
    src = _read(files, size)
    keyed = [(f"v{i}", f) for i, f in enumerate(src)]
    clips = {f"{r} fps": keyed[::step][:max_clip] for r, step in STEPS.items()}
    blends = []
    for i, (a, b) in enumerate(zip(src, src[1:])):
        mid = ((a.astype(np.uint16) + b) // 2).astype(np.uint8)
        blends += [(f"v{i}", a), (f"b{i}", mid)]
    clips["30 fps"] = blends[:max_clip]
    clips["cut"] = keyed[-cut:] + [
        (f"o{i}", f) for i, f in enumerate(other_sequence(root, size, cut))
    ]
    return clips


def other_sequence(root: Path, size, n: int) -> list[np.ndarray]:
    """n frames of a CamVid sequence other than val's (0006R0), else a synthetic street."""
    files = sorted(p for p in (root / "train").glob("*.png") if p.name.startswith("0006R0"))
    if len(files) >= n:
        return _read(files[:n], size)
    from seguncert.data.synthetic import render_sequence

    return [s["image"] for s in render_sequence(n, size=tuple(size), seed=0, fps=15.0)]


def run_clip(frames, per_frame, temporal, cache: dict, timing: dict) -> dict:
    """Alternate the two predictors frame by frame over one clip (per-frame results cached)."""
    ratios, fused, ref, more, cuts, seconds = [], [], [], 0, [], 0.0
    temporal.reset()
    for key, frame in frames:
        if key not in cache:
            t0 = time.perf_counter()
            cache[key] = float(per_frame([frame])[0]["epistemic"].mean())
            timing["seconds"] += time.perf_counter() - t0
            timing["frames"] += 1
        t0 = time.perf_counter()
        m = float(temporal([frame])[0]["epistemic"].mean())
        seconds += time.perf_counter() - t0
        fused.append(m)
        ref.append(cache[key])
        ratios.append(m / max(cache[key], 1e-12))
        more += temporal.sampler.last_top_up
        cuts.append(bool(temporal.sampler.last_cut))
    r = np.array(ratios)
    return {
        "frames": len(frames), "ratios": r, "cuts": cuts,
        "ratio_min": float(r.min()), "ratio_median": float(np.median(r)),
        "ratio_max": float(r.max()), "within": bool(_within(r)),
        "epistemic_temporal": float(np.mean(fused)), "epistemic_per_frame": float(np.mean(ref)),
        "fps_temporal": len(frames) / max(seconds, 1e-9), "reset_share": more / len(frames),
    }  # fmt: skip


def _within(r: np.ndarray) -> bool:
    return bool((r <= TOLERANCE).all() and (r >= 1.0 / TOLERANCE).all())


def make_predictors(args, device):
    from seguncert.inference.frames import FramePredictor, TemporalPredictor
    from seguncert.io.checkpoint import load_checkpoint
    from seguncert.uncertainty.checkpoint_calibration import checkpoint_calibrator
    from seguncert.uncertainty.sampler import MCSampler
    from seguncert.uncertainty.temporal import TemporalMC

    model, info = load_checkpoint(args.checkpoint, map_location=device)
    cal, meta = checkpoint_calibrator(info), info["meta"]
    opts = dict(seed=args.seed, calibrator=cal)
    per_frame = FramePredictor(MCSampler(model, samples=args.samples, **opts), meta, device)
    temporal = {
        mode: TemporalPredictor(TemporalMC(model, args.temporal, flow=mode == "flow", **opts),
                                meta, device)
        for mode in args.modes
    }  # fmt: skip
    size = parse_hw(args.size) if args.size else None
    if size is None:
        size = tuple((info.get("config") or {}).get("data", {}).get("size") or (180, 240))
    return per_frame, temporal, size, temporal[args.modes[0]].sampler.reset_samples


def report(results: dict, timing: dict, args) -> None:
    fps_ref = timing["frames"] / max(timing["seconds"], 1e-9)
    rows = []
    for mode, clips in results.items():
        for name, r in clips.items():
            rows.append([mode, name, r["frames"], r["ratio_min"], r["ratio_median"],
                         r["ratio_max"], verdict(r["within"]), r["epistemic_temporal"] * 1e3,
                         r["epistemic_per_frame"] * 1e3, r["fps_temporal"], fps_ref,
                         r["fps_temporal"] / fps_ref, r["reset_share"]])  # fmt: skip
    print_table(
        ["mode", "clip", "frames", "ratio min", "median", "max", "1.5x", "MI temp e-3",
         "MI T e-3", "fps temp", "fps T", "speed-up", "reset share"], rows,
        f"mean epistemic per frame: temporal K={args.temporal} / per-frame T={args.samples} "
        f"(within [1/{TOLERANCE}, {TOLERANCE}] on every frame)",
    )  # fmt: skip
    for mode, clips in results.items():
        cut = clips["cut"]
        after = cut["ratios"][args.cut_frames :]
        print(f"{mode}: cut flagged at the cut frame: {cut['cuts'][args.cut_frames]}; ratios "
              f"after it: {' '.join(f'{v:.2f}' for v in after)}")  # fmt: skip


def main() -> int:
    p = doc_parser(__doc__)
    p.add_argument("--checkpoint", required=True, help="run folder or .json (trained on CamVid)")
    p.add_argument("--data-root", help="CamVid root (default ../shared/datasets/camvid)")
    p.add_argument("--size", help="HxW (default: the checkpoint's training size; quick 96x128)")
    p.add_argument("--samples", type=int, default=20, help="per-frame MC samples T (default 20)")
    p.add_argument("--temporal", type=int, default=2, help="fresh samples per frame K (default 2)")
    p.add_argument(
        "--modes", default="plain,flow", help="temporal modes: plain,flow (default both)"
    )
    p.add_argument("--frames", type=int, default=101, help="source frames of 0016E5 (default 101)")
    p.add_argument("--max-clip", type=int, help="frames per clip (default 40, quick 12)")
    p.add_argument(
        "--cut-frames", type=int, help="frames each side of the cut (default 8, quick 4)"
    )
    add_common_args(p, repeats=1)
    args = p.parse_args()
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or set(args.modes) - {"plain", "flow"}:
        raise ConfigError(f"--modes takes plain and/or flow, got {','.join(args.modes)!r}")
    parse_ints(f"{args.samples},{args.temporal},{args.frames}", "--samples/--temporal/--frames")
    args.max_clip = args.max_clip or (12 if args.quick else 40)
    args.cut_frames = args.cut_frames or (4 if args.quick else 8)
    if args.quick and not args.size:
        args.size = "96x128"
    device = setup(args)
    root = require_camvid(args.data_root)
    per_frame, temporal, size, reset_samples = make_predictors(args, device)
    clips = build_clips(root, size, args.frames, args.max_clip, args.cut_frames)
    print(f"temporal rates on {device_label(device)}: {args.checkpoint}, {size[0]}x{size[1]}, "
          f"T={args.samples}, K={args.temporal}, reset_samples={reset_samples}")  # fmt: skip
    cache, timing, results = {}, {"seconds": 0.0, "frames": 0}, {}
    for mode, predictor in temporal.items():
        results[mode] = {name: run_clip(frames, per_frame, predictor, cache, timing)
                         for name, frames in clips.items()}  # fmt: skip
    report(results, timing, args)
    summary = summarise(results, timing, args, size, reset_samples)
    summary.update(device=device_label(device), machine=describe_machine(device), quick=args.quick)
    emit_summary(summary, args.json)
    return 0


def summarise(results: dict, timing: dict, args, size, reset_samples) -> dict:
    keep = ("frames", "ratio_min", "ratio_median", "ratio_max", "within", "epistemic_temporal",
            "epistemic_per_frame", "fps_temporal", "reset_share")  # fmt: skip
    out = {mode: {name: {k: r[k] for k in keep} for name, r in clips.items()}
           for mode, clips in results.items()}  # fmt: skip
    for mode, clips in results.items():
        out[mode]["cut"]["flagged"] = clips["cut"]["cuts"][args.cut_frames]
    fps_ref = timing["frames"] / max(timing["seconds"], 1e-9)
    within = all(r["within"] for clips in results.values() for r in clips.values())
    ratios = [v for clips in results.values() for r in clips.values() for v in r["ratios"]]
    return {
        "bench": "temporal_rates", "checkpoint": str(args.checkpoint), "size": list(size),
        "samples": args.samples, "temporal": args.temporal, "reset_samples": reset_samples,
        "tolerance": TOLERANCE, "all_within": within, "fps_per_frame": fps_ref,
        "ratio_median_all": statistics.median(ratios), "modes": out,
    }  # fmt: skip


if __name__ == "__main__":
    run_cli(main)
