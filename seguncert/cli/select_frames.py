"""Rank unlabelled video frames by what the model would learn from them, and pick a diverse set
to label (active learning: Gal, Islam & Ghahramani 2017).

Every S-th frame (--stride) of the inputs goes through T MC-dropout samples (--mc-samples) and
is scored by --acquisition, the mean over the frame's pixels of:
  bald           mutual information between label and weights (epistemic, nats; default)
  entropy        predictive entropy (total uncertainty, nats)
  weighted_bald  MI x the checkpoint's class weight of the predicted class (mean-1 weights:
                 uncertainty on rare classes counts more; equals bald without class weights)
  random         a uniform number per frame fixed by --seed (the baseline)
Picks are taken greedily by score, skipping frames fewer than --min-gap frames from a pick of
the same input and frames whose 12x16 grey thumbnail has cosine similarity > --max-similarity
with a pick's (the same view seen again). A --budget above what is eligible takes all, says so.

Outputs in --out: scores.jsonl (every scored frame, all four scores, per-class MI; resumable:
a run stopped at any point continues where it was, and a rerun with --overwrite and another
--acquisition, --budget or diversity setting re-selects without scoring again),
picks/<input>_<frame>.png (the picked frames at native resolution, for a labelling tool),
contact_sheet.png (each pick beside its MI map) and picks.csv (rank, input, frame, time_s,
path, png, scores, mi_<class>), written last. Existing picks are kept unless --overwrite;
scores made with other settings (checkpoint, T, seed, inputs, stride, size) are refused
unless --overwrite (then scored again).

Time (measured on this project's 2-core CPU, one thread, the CamVid CPU recipe's U-Net
resnet18 with central dropout, scored at its 180x240 training size, T = 8): a frame costs
0.93 s of CPU, 1.1-1.6 s wall while the other core and this one also ran other jobs. A
10-minute 15 fps 360x480 video is 9000 frames, 600 scored at the default stride of 15:
measured end to end with both cores free and torch's default 2 threads, 4 min 50 s (600
frames scored in 265 s, then 20 picks read back and mapped); about 11 minutes on one free
core, 12-18 minutes on a shared one. Cost grows with the scored frames x T x pixels:
--size 360x480 is ~4x (3.6 s CPU per frame: ~40 minutes), --stride 30 halves it. Frames are
scored one at a time (every frame sees the same dropout masks, so a score does not depend on
its neighbours or on a resume).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..errors import SeguncertError
from ..io.atomic import check_folder_writable
from ..io.video_reader import iter_inputs

FLAGS = [  # (flag, argparse keywords, help)
    ("--checkpoint", dict(required=True), "run folder (best), a .json, or an ensemble folder"),
    ("--input", dict(required=True, nargs="+"), "video files, frame folders, images or globs"),
    ("--budget", dict(type=int, required=True), "number of frames to pick"),
    ("--out", dict(default="selection"), "output folder (default: selection/)"),
    ("--acquisition", dict(default="bald", choices=("bald", "entropy", "weighted_bald", "random")),
     "score that ranks frames (default bald)"),
    ("--stride", dict(type=int), "score every S-th frame (default: round(fps) for a video, about "
     "one frame per second; 1 for frame folders and images)"),
    ("--mc-samples", dict(type=int, default=8), "MC dropout samples T per frame (default 8)"),
    ("--size", dict(default="model"), "scoring size: model (the checkpoint's training size, "
     "default), native, or HxW e.g. 360x480"),
    ("--min-gap", dict(type=int), "no two picks of one input closer than this many frames "
     "(default 3 x the stride)"),
    ("--max-similarity", dict(type=float, default=0.95),
     "largest thumbnail cosine similarity to a pick (default 0.95; 1 turns it off)"),
    ("--seed", dict(type=int, default=0), "seed of the dropout masks and of random (default 0)"),
    ("--threads", dict(type=int), "CPU threads for torch (default: torch's, OMP_NUM_THREADS)"),
    ("--device", dict(default="auto"), "auto | cpu | cuda | cuda:N"),
    ("--memory-budget-mb", dict(type=float, default=1024.0), "bound on one MC suffix chunk (MB)"),
    ("--overwrite", dict(action="store_true"), "replace existing picks (and scores made "
     "with other settings)"),
]  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="seguncert-select-frames",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    for flag, kw, text in FLAGS:
        p.add_argument(flag, help=text, **kw)
    a = p.parse_args(argv)
    if a.budget < 1 or a.mc_samples < 1 or (a.stride or 1) < 1 or (a.threads or 1) < 1:
        p.error("--budget, --mc-samples, --stride and --threads must be >= 1")
    if (a.min_gap is not None and a.min_gap < 0) or not -1.0 <= a.max_similarity <= 1.0:
        p.error("--min-gap must be >= 0 and --max-similarity in [-1, 1]")
    return a


def scoring_size(text: str):
    if text in ("model", "native"):
        return text
    from .infer import parse_size

    return parse_size(text)


def check_outputs(out: Path, overwrite: bool) -> None:
    """--out usable, and an earlier selection in it kept unless --overwrite."""
    from ..active.report import PICKS_CSV, PICKS_DIR, SHEET_PNG

    if out.exists() and not out.is_dir():
        raise SeguncertError(f"--out {out} is a file; it must be a folder")
    check_folder_writable(out)
    old = [out / PICKS_CSV, out / SHEET_PNG, *sorted((out / PICKS_DIR).glob("*.png"))]
    old = [p for p in old if p.exists()]
    if old and not overwrite:
        raise SeguncertError(f"{old[0]} already exists; pass --overwrite to replace the picks")


def read_infos(checkpoint: str) -> list[dict]:
    """Sidecars of the checkpoint (or of every ensemble member), without loading weights."""
    from ..io.checkpoint import ensemble_members, read_sidecar, resolve_checkpoint
    from ..tasks import checkpoint_task

    infos = [read_sidecar(resolve_checkpoint(p)[0]) for p in ensemble_members(checkpoint)]
    for info in infos:
        if not checkpoint_task(info).segmentation:
            raise SeguncertError(
                f"{checkpoint} is a {info.get('kind')} checkpoint; frame selection needs class "
                "predictions (a segmentation or joint checkpoint)"
            )
    return infos


def model_size(info: dict):
    size = ((info.get("config") or {}).get("data") or {}).get("size")
    return size if isinstance(size, list) and len(size) == 2 else None


def build_scorer(args, models, infos, device):
    from ..active.acquisition import normalised_class_weights
    from ..active.scoring import FrameScorer
    from ..inference.frames import FramePredictor
    from ..uncertainty.checkpoint_calibration import checkpoint_calibrator
    from ..uncertainty.ensemble import EnsembleSampler
    from ..uncertainty.sampler import MCSampler

    opts = {"memory_budget_mb": args.memory_budget_mb, "seed": args.seed}
    cals = [checkpoint_calibrator(i) for i in infos]
    if len(models) > 1:
        sampler = EnsembleSampler(models, args.mc_samples, calibrators=cals, **opts)
    else:
        sampler = MCSampler(models[0], samples=args.mc_samples, calibrator=cals[0], **opts)
    meta = infos[0]["meta"]
    classes = len(meta["class_names"])
    weights = normalised_class_weights(meta.get("class_weights"), classes)
    if weights is None and args.acquisition == "weighted_bald":
        print("note: the checkpoint has no class weights; weighted_bald equals bald")
    return FrameScorer(FramePredictor(sampler, meta, device), weights, classes, args.seed)


def plan_inputs(args, infos):
    from ..active.scoring import plan_source

    size, sources = scoring_size(args.size), iter_inputs(args.input)
    return [plan_source(s, size, args.stride, model_size(infos[0])) for s in sources]


def run_scoring(args, plans, log, scorer) -> int:
    """Score what the log lacks, with a progress bar over the frames still to score."""
    from ..active.scoring import score_all
    from ..runtime.progress import Progress

    planned = [p.planned() for p in plans]
    total = None if None in planned else max(sum(planned) - log.resumed, 0)
    if log.resumed:
        print(f"resuming: {log.resumed} frame(s) already scored in {log.path}")
    with Progress(total, "scoring", unit="frame", rate_unit="frames") as bar:
        return score_all(plans, scorer, log, bar, args.acquisition)


def pick(args, plans, records):
    """The selection, with a per-input gap (3 x its stride unless --min-gap)."""
    from ..active.selection import select

    gaps = {p.name: args.min_gap if args.min_gap is not None else 3 * p.stride for p in plans}
    sel = select(records, args.budget, gaps, args.max_similarity, args.acquisition)
    if sel.message:
        print(sel.message)
    return sel


def remove_stale_picks(old: list[Path], keep: set[Path]) -> None:
    """On --overwrite, once the new picks.csv is in place: the PNGs the earlier picks.csv named
    and this selection does not."""
    for png in old:
        if png not in keep:
            png.unlink(missing_ok=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    infos = read_infos(args.checkpoint)
    plans = plan_inputs(args, infos)  # opens every input: a bad one fails before any work
    check_outputs(out, args.overwrite)
    from ..active.report import PICKS_CSV, PICKS_DIR, png_name, read_picked_pngs, write_outputs
    from ..active.scoring import score_header
    from ..active.selection import ScoreLog, read_log
    from ..runtime.device import resolve_device
    from ..uncertainty.ensemble import load_members

    header = score_header(infos, plans, args.mc_samples, args.seed)
    log_path = out / "scores.jsonl"
    read_log(log_path, header, args.overwrite)  # refuse other settings before the model load
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    device = resolve_device(args.device, what="--device")
    models, infos = load_members(args.checkpoint, device)
    scorer = build_scorer(args, models, infos, device)
    t0 = time.perf_counter()
    with ScoreLog(log_path, header, args.overwrite) as log:
        resumed, scored = log.resumed, run_scoring(args, plans, log, scorer)
        records = list(log.records.values())
    dt = time.perf_counter() - t0
    rate = f", {dt / scored:.2f} s/frame" if scored else ""
    print(f"scored {scored} frame(s) in {dt:.1f} s{rate} ({resumed} from an earlier run)")
    sel = pick(args, plans, records)
    old = read_picked_pngs(out / PICKS_CSV)
    class_names = infos[0]["meta"]["class_names"]
    write_outputs(out, sel.picks, {p.name: p for p in plans}, scorer, args.acquisition, class_names)
    remove_stale_picks(old, {out / PICKS_DIR / png_name(r) for r in sel.picks})
    print(f"picked {len(sel.picks)} of {len(records)} frames by {args.acquisition}: "
          f"{out / 'picks.csv'}, {out / PICKS_DIR}/, {out / 'contact_sheet.png'}")  # fmt: skip
    return 0
