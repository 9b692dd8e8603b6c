"""Run a checkpoint on videos / frame folders / images and write uncertainty overlay videos.

Each output frame is a row of panels, by checkpoint kind:
  segmentation: input | fused segmentation over the input (class legend in a strip below) |
                aleatoric (expected entropy, nats) | epistemic (mutual information, nats)
  depth:        input | depth (m) | aleatoric σ (m) | epistemic σ (m)
  joint:        input | segmentation | depth (m) | epistemic (segmentation MI, nats)
  and, when the checkpoint carries a fitted feature density (tools/evaluate.py --fit-density;
  tools/demo.py fits one), a last panel 'novelty': its score in standard deviations of the
  training pixels' scores (the map that finds foreign objects; one extra pass per frame).
Colour scales are fixed for a whole video: a calibration pass over 8 frames spread through it
takes the 99th percentile of each uncertainty map (or --scale fixed:LO,HI); depth uses the
checkpoint's [min_depth, max_depth]. The checkpoint's fitted calibration is applied.

Network size (--net-size): by default frames are shrunk (aspect kept) to the pixel count the
checkpoint was trained at (its config's data.size, e.g. 180x240 for configs/camvid_unet_cpu.yaml)
and the maps upsampled back, so a 360x480 video keeps its size on screen while the model sees
objects at the scale it learned them and pays a quarter of the pixels; --net-size native runs
the frames as they are. What the defaults cost (T = 20 per frame at the training size): about
1.2 deterministic passes of the model at the native size per frame, 4x faster than T = 20 at the
native size, with better mIoU, ECE and error-detection AUROC of entropy and aleatoric (on CamVid
0016E5: docs/benchmarks.md, "Video quality / cost front", which also lists the cheaper settings
and what they lose).

Panels (--panels): input, seg, aleatoric, epistemic, entropy (total), novelty; depth,
depth_aleatoric, depth_epistemic, depth_total (σ in m). For depth checkpoints aleatoric/epistemic/entropy are the
depth σ maps. --temporal K (TemporalMC, batch 1) runs K fresh samples per frame and fuses them
with a decayed history of earlier frames' samples (--flow warps it along the optical flow).
The 'uncertain' threshold of the statistics defaults to the 90th percentile of the epistemic map
over the calibration frames (--uncertain-threshold overrides it).

Outputs: one input with --out ending .mp4/.avi writes that file (.avi: MJPG, else mp4v);
otherwise --out is a folder holding <name>.mp4 per input. Beside each video: <name>.csv
(per-frame statistics: mean aleatoric, mean epistemic, fraction of pixels whose epistemic value
exceeds the 'uncertain' threshold, class fractions; mean and max novelty with that panel) and
<name>_sheet.png (contact sheet of 6 frames), unless --stats / --contact-sheet say otherwise (folders when there are several inputs).
Every file is written atomically; existing outputs are kept unless --overwrite. Frames too
large for the free memory are refused up front, naming the size (or the batch is reduced).
Under torchrun the inputs are shared out across ranks
(input i goes to rank i % WORLD_SIZE), each rank on cuda:LOCAL_RANK when CUDA is available.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from ..errors import SeguncertError
from ..inference.video import OutputPlan
from ..io.atomic import check_writable
from ..io.video_reader import FrameReader, iter_inputs

FLAGS = [  # (flag, argparse keywords, help)
    ("--checkpoint", dict(required=True), "run folder (takes best) or a checkpoint .json"),
    ("--input", dict(required=True, nargs="+"), "video files, frame folders, images or globs"),
    ("--out", dict(default="out"), "output .mp4/.avi (one input) or a folder (default: out/)"),
    ("--mc-samples", dict(type=int, default=20), "MC dropout samples T per frame (default 20)"),
    ("--size", {}, "resize frames to HxW first, e.g. 360x480 (default: native size)"),
    ("--net-size", dict(default="train"), "network size: train (default), native or HxW"),
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
    ("--overwrite", dict(action="store_true"), "replace outputs that already exist"),
]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="seguncert-infer", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    for flag, kw, text in FLAGS:
        p.add_argument(flag, help=text, **kw)
    args = p.parse_args(argv)
    if args.mc_samples < 1 or args.temporal < 0 or (args.batch is not None and args.batch < 1):
        p.error("--mc-samples and --batch must be >= 1, --temporal >= 0")
    return args


def parse_size(text: str, flag: str = "--size") -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
        assert h > 0 and w > 0
    except (ValueError, AssertionError):
        raise SeguncertError(f"{flag} must look like HxW (e.g. 360x480), got {text!r}") from None
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


def output_plans(args, sources) -> list[OutputPlan]:
    """Where each source's outputs go, following the rules in the module docstring."""
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
            OutputPlan(
                video, Path(stats or f"{base}.csv"), Path(sheet or f"{base}_sheet.png"), fdir
            )
        )
    return plans


def check_outputs(plans: list[OutputPlan], overwrite: bool) -> None:
    """Every output writable, and none silently replaced."""
    for plan in plans:
        for path in (plan.video, plan.stats, plan.sheet):
            if path.exists() and not overwrite:
                raise SeguncertError(f"{path} already exists; pass --overwrite to replace it")
            check_writable(path)


def novelty_scorer(model, info: dict, panels):
    """The feature-density scorer when the panels show ``novelty`` (None otherwise); a one-line
    error when the checkpoint has no fitted density."""
    from ..uncertainty.feature_density import NoveltyScorer, load_density
    from ..viz.panels import NOVELTY

    if NOVELTY not in panels:
        return None
    density = load_density(info)
    if density is None:
        raise SeguncertError(
            f"the novelty panel needs a feature density fitted on {info.get('sidecar_path')}: "
            "run tools/evaluate.py --checkpoint ... --fit-density first"
        )
    return NoveltyScorer(model, density)


def build_predictors(args, models, infos, device, panels=(), net=None):
    """(predictor for the video, predictor for the colour calibration pass); ``net``: the
    network size of :func:`net_size` (None: native)."""
    from ..inference.frames import FramePredictor, TemporalPredictor
    from ..uncertainty.checkpoint_calibration import checkpoint_calibrator
    from ..uncertainty.ensemble import EnsembleSampler
    from ..uncertainty.sampler import MCSampler

    opts = {"memory_budget_mb": args.memory_budget_mb, "seed": args.seed}
    cals = [checkpoint_calibrator(i) for i in infos]
    if len(models) > 1:
        if args.temporal:
            raise SeguncertError("--temporal takes one checkpoint, not an ensemble")
        sampler = EnsembleSampler(models, args.mc_samples, calibrators=cals, **opts)
    else:
        sampler = MCSampler(models[0], samples=args.mc_samples, calibrator=cals[0], **opts)
    novelty = novelty_scorer(models[0], infos[0], panels)
    calib = FramePredictor(sampler, infos[0]["meta"], device, novelty, net)
    if not args.temporal:
        return calib, calib
    from ..uncertainty.temporal import TemporalMC

    temporal = TemporalMC(models[0], args.temporal, flow=args.flow, calibrator=cals[0], **opts)
    return TemporalPredictor(temporal, infos[0]["meta"], device, novelty, net), calib


def net_size(text: str, info: dict) -> tuple[int, int] | None:
    """--net-size as (H, W) of the pixel count to shrink frames to, or None (native)."""
    if text == "native":
        return None
    if text != "train":
        return parse_size(text, "--net-size")
    size = ((info.get("config") or {}).get("data") or {}).get("size")
    return tuple(int(v) for v in size) if size else None


def view_settings(args, info, size, device) -> dict:
    from ..tasks import checkpoint_task
    from ..uncertainty.feature_density import SIDECAR_KEY
    from ..viz.panels import NOVELTY, PanelRenderer, Scales

    task = checkpoint_task(info)
    default = list(task.default_panels)
    if task.segmentation and info.get(SIDECAR_KEY):
        default.append(NOVELTY)
    panels = args.panels.split(",") if args.panels else default
    PanelRenderer(task.name, panels, info["meta"], Scales({}, 0.0))  # rejects bad --panels
    return {
        "kind": task.name,
        "meta": info["meta"],
        "panels": panels,
        "layout": args.layout,
        "size": size,
        "batch": args.batch or (16 if device.type == "cuda" else 4),
        "scale": parse_scale(args.scale),
        "threshold": args.uncertain_threshold,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    size = parse_size(args.size) if args.size else None
    parse_scale(args.scale)
    net_size(args.net_size, {})  # a bad --net-size fails before the model loads
    sources = iter_inputs(args.input)
    plans = output_plans(args, sources)
    mine = [i for i in range(len(sources)) if i % world == rank]
    # Open every input and check every output location before the (slow) model load.
    frame_sizes = [FrameReader(sources[i], size=size).out_size for i in mine]
    check_outputs([plans[i] for i in mine], args.overwrite)
    from ..inference.frames import check_memory, network_size
    from ..inference.video import probe_writer, render_source
    from ..runtime.device import resolve_device
    from ..uncertainty.ensemble import load_members
    from ..viz.panels import composed_size

    device = resolve_device(args.device, local_rank, what="--device")
    models, infos = load_members(args.checkpoint, device)  # one checkpoint or an ensemble
    model, info = models[0], infos[0]
    view = view_settings(args, info, size, device)
    net = net_size(args.net_size, info)
    for i, hw in zip(mine, frame_sizes, strict=True):
        batch = check_memory(model, network_size(hw, net), view["batch"],
                             args.memory_budget_mb, device)  # fmt: skip
        if batch < view["batch"]:
            print(f"frames of {hw[1]}x{hw[0]}: batch lowered to {batch} to fit in memory")
            view["batch"] = batch
        out_hw = composed_size(view["kind"], view["panels"], view["meta"], view["layout"], hw)
        probe_writer(plans[i].video, out_hw)
    predict, calib = build_predictors(args, models, infos, device, view["panels"], net)
    total, t0 = 0, time.perf_counter()
    for i in mine:
        done, fps = render_source(sources[i], plans[i], predict, calib, view)
        p = plans[i]
        extra = f", {p.frames_dir}/" if p.frames_dir else ""
        print(f"{sources[i].name}: {done} frames, {fps:.2f} frames/s -> {p.video}, ", end="")
        print(f"{p.stats}, {p.sheet}{extra}")
        total += done
    dt = time.perf_counter() - t0
    rate = total / max(dt, 1e-9)
    print(f"done: {total} frames from {len(mine)} input(s) in {dt:.1f} s ({rate:.2f} frames/s)")
    return 0
