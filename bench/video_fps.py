"""Video throughput of tools/infer.py, and the quality cost of temporal sample reuse.

Speed mode (default): tools/infer.py is run as a subprocess on one clip for T in --samples and
with temporal reuse (--temporal K: K fresh samples per frame fused with a decayed history,
colour scales still calibrated with T = 20), and its own figures are parsed: frames/s of the
clip (colour-scale calibration pass, whose results the frame-independent video pass reuses,
MC maps, panel rendering, video encoding; model loading excluded) and of its final line. The
clip is a street drive rendered by seguncert.data.synthetic.render_sequence (--source synthetic) or the
first CamVid val frames (0016E5, in order; --source camvid). Without --checkpoint a freshly
initialised model is saved with the checkpoint API: speed does not depend on training.

Quality mode (--temporal-quality --checkpoint CKPT): on CamVid val 0016E5 frames in order (the
101 val frames sorted by name are one 15 Hz sequence), per frame T = 20 MC sampling vs temporal
reuse with K fresh samples (and plain K-sample MC, to show what the history adds): Pearson
correlation of the epistemic (MI) and aleatoric maps with the T = 20 maps (mean over frames),
AUROC of each method's epistemic map for its own misclassified pixels, and frames/s (maps only).

    python bench/video_fps.py                                    # 360x480, 24 frames
    python bench/video_fps.py --quick --json
    python bench/video_fps.py --temporal-quality --checkpoint runs/camvid --data-root DIR
"""

from __future__ import annotations

import math
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from _common import (
    REPO,
    add_common_args,
    camvid_val_batches,
    describe_machine,
    device_label,
    doc_parser,
    emit_summary,
    parse_hw,
    parse_ints,
    print_table,
    require_camvid,
    setup,
)

from seguncert.errors import ConfigError, SeguncertError, run_cli

CLIP_LINE = re.compile(r": (\d+) frames, ([0-9.]+) frames/s ->")
DONE_LINE = re.compile(r"^done: .* in [0-9.]+ s \(([0-9.]+) frames/s\)", re.M)


def write_clip(folder: Path, source: str, n: int, size, data_root) -> Path:
    """PNG frames of the clip in ``folder`` (a frame folder is one input of tools/infer.py)."""
    folder.mkdir(parents=True, exist_ok=True)
    if source == "camvid":
        frames = (rgb for _, _, rgb in camvid_val_batches(require_camvid(data_root), n, size,
                                                          (0, 0, 0), (1, 1, 1)))  # fmt: skip
    else:
        from seguncert.data.synthetic import render_sequence

        frames = (s["image"] for s in render_sequence(n, size=size, seed=0, fps=15.0))
    for i, rgb in enumerate(frames):
        cv2.imwrite(str(folder / f"frame_{i:05d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return folder


def fresh_checkpoint(folder: Path, seed: int) -> Path:
    """An untrained default model (U-Net resnet18, decoder dropout) saved as a run folder."""
    from seguncert.config import Config
    from seguncert.data.common import DatasetMeta
    from seguncert.io.checkpoint import save_checkpoint
    from seguncert.models.build import build_model

    torch.manual_seed(seed)
    cfg = Config()
    model = build_model(cfg.model, depth_dist=cfg.loss.depth)
    save_checkpoint(folder, "best", model, meta=DatasetMeta(), config=cfg)
    return folder


def run_infer(ckpt, clip: Path, out: Path, samples: int, temporal: int, args) -> dict:
    cmd = [sys.executable, str(REPO / "tools" / "infer.py"), "--checkpoint", str(ckpt),
           "--input", str(clip), "--out", str(out / "clip.mp4"), "--mc-samples", str(samples),
           "--temporal", str(temporal), "--device", args.device, "--seed", str(args.seed),
           "--overwrite"]  # fmt: skip
    if args.flow and temporal:
        cmd.append("--flow")
    if getattr(args, "net_size", None):
        cmd += ["--net-size", args.net_size]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t0
    clip_m, done_m = CLIP_LINE.search(res.stdout), DONE_LINE.search(res.stdout)
    if res.returncode != 0 or not clip_m or not done_m:
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
        raise SeguncertError(f"tools/infer.py failed (exit {res.returncode}): {tail[0]}")
    return {"fps": float(clip_m.group(2)), "fps_total": float(done_m.group(1)),
            "frames": int(clip_m.group(1)), "process_s": wall}  # fmt: skip


def speed_mode(args, device) -> dict:
    ts = parse_ints(args.samples or "1,8,20", "--samples")
    ks = parse_ints(args.temporal or "4", "--temporal")
    n = args.frames or (6 if args.quick else 24)
    size = parse_hw(args.size or ("180x240" if args.quick else "360x480"))
    runs = {f"T{t}": (t, 0) for t in ts}
    runs.update({f"temporal_K{k}_T20": (20, k) for k in ks})
    print(f"video_fps on {device_label(device)}: tools/infer.py, {args.source} clip of {n} "
          f"frames at {size[0]}x{size[1]}, {args.repeats} run(s) each, median")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clip = write_clip(tmp / "clip", args.source, n, size, args.data_root)
        ckpt = args.checkpoint or fresh_checkpoint(tmp / "ckpt", args.seed)
        results: dict[str, list[dict]] = {k: [] for k in runs}
        for _ in range(args.repeats):  # round-robin, so load changes hit every setting alike
            for name, (t, k) in runs.items():
                results[name].append(run_infer(ckpt, clip, tmp / "out", t, k, args))
    fps = {k: statistics.median(r["fps"] for r in v) for k, v in results.items()}
    total = {k: statistics.median(r["fps_total"] for r in v) for k, v in results.items()}
    rows = [[k, fps[k], total[k], fps[k] / fps[f"T{ts[0]}"]] for k in runs]
    print_table(["setting", "frames/s", "done: line", f"x T{ts[0]}"], rows)
    out = {"bench": "video_fps", "fps": fps, "fps_total": total,
           "frames": n, "size": list(size), "source": args.source, "net_size": args.net_size,
           "checkpoint": str(args.checkpoint) if args.checkpoint else "fresh (untrained)"}  # fmt: skip
    if "T20" in fps:
        out["speedup_vs_T20"] = {k: v / fps["T20"] for k, v in fps.items() if "temporal" in k}
    return out


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else float("nan")


def quality_mode(args, device) -> dict:
    from seguncert.inference.frames import FramePredictor, TemporalPredictor
    from seguncert.io.checkpoint import load_checkpoint
    from seguncert.metrics.quality import UncertaintyQuality
    from seguncert.uncertainty.sampler import MCSampler
    from seguncert.uncertainty.temporal import TemporalMC

    if not args.checkpoint:
        raise ConfigError("--temporal-quality needs --checkpoint (a model trained on CamVid)")
    root = require_camvid(args.data_root)
    ks = parse_ints(args.temporal or "2,4", "--temporal")
    n = args.frames or (8 if args.quick else 101)
    model, info = load_checkpoint(args.checkpoint, map_location=device)
    meta = info["meta"]
    size = parse_hw(args.size) if args.size else None
    if size is None and (info.get("config") or {}).get("data", {}).get("size"):
        size = tuple(info["config"]["data"]["size"])
    opts = dict(seed=args.seed)
    steps = {"T20": MCSampler(model, samples=20, **opts)}
    for k in ks:
        steps[f"temporal_K{k}"] = TemporalMC(model, k, flow=args.flow, **opts)
        steps[f"mc_K{k}"] = MCSampler(model, samples=k, **opts)
    predictors = {
        name: (TemporalPredictor if isinstance(step, TemporalMC) else FramePredictor)(
            step, meta, device
        )
        for name, step in steps.items()
    }
    log_c = math.log(len(meta["class_names"]))
    quality = {m: UncertaintyQuality(["epistemic"], ranges={"epistemic": (0.0, log_c)})
               for m in steps}  # fmt: skip
    corr = {m: {"epistemic": [], "aleatoric": []} for m in steps if m != "T20"}
    seconds = dict.fromkeys(steps, 0.0)
    frames = 0
    print(f"temporal quality on {device_label(device)}: CamVid val, {n} frames in order, "
          f"size {size or 'native'}, K = {ks}, flow {'on' if args.flow else 'off'}")  # fmt: skip
    for _, label, rgb in camvid_val_batches(root, n, size, meta["mean"], meta["std"]):
        lab = label[0].numpy()
        maps = {}
        for name, predict in predictors.items():
            t0 = time.perf_counter()
            maps[name] = predict([rgb])[0]
            seconds[name] += time.perf_counter() - t0
            m = maps[name]
            correct = torch.from_numpy(m["pred"].astype(np.int64) == lab)[None]
            quality[name].update({"epistemic": torch.from_numpy(m["epistemic"])[None]},
                                 correct, torch.from_numpy(lab != 255)[None])  # fmt: skip
        for name in corr:
            for key in ("epistemic", "aleatoric"):
                corr[name][key].append(pearson(maps[name][key], maps["T20"][key]))
        frames += 1
    res = {}
    for name in steps:
        q = quality[name].compute()
        r = {"auroc_epistemic": q["maps"]["epistemic"]["auroc"], "error_rate": q["error_rate"],
             "fps": frames / max(seconds[name], 1e-9)}  # fmt: skip
        if name in corr:
            r["pearson_epistemic"] = float(np.nanmean(corr[name]["epistemic"]))
            r["pearson_aleatoric"] = float(np.nanmean(corr[name]["aleatoric"]))
            r["pearson_epistemic_min"] = float(np.nanmin(corr[name]["epistemic"]))
        res[name] = r
    rows = [[k, v.get("pearson_epistemic"), v.get("pearson_aleatoric"), v["auroc_epistemic"],
             v["error_rate"], v["fps"]] for k, v in res.items()]  # fmt: skip
    print_table(["method", "r(MI)", "r(aleatoric)", "AUROC(MI)", "error", "frames/s"], rows,
                "correlation with the T=20 maps (mean over frames); AUROC for own errors")  # fmt: skip
    return {"bench": "video_fps", "temporal": res, "frames": frames,
            "size": list(size) if size else "native", "checkpoint": str(args.checkpoint)}  # fmt: skip


def main() -> int:
    p = doc_parser(__doc__)
    p.add_argument("--checkpoint", help="run folder or .json (default: a fresh untrained model)")
    p.add_argument("--source", choices=("synthetic", "camvid"), default="synthetic")
    p.add_argument("--data-root", help="CamVid root (default ../shared/datasets/camvid)")
    p.add_argument("--samples", help="speed mode: T values (default 1,8,20)")
    p.add_argument("--temporal", help="K values (default 4; quality mode 2,4)")
    p.add_argument("--flow", action="store_true", help="temporal reuse warps along optical flow")
    p.add_argument("--frames", type=int, help="frames (default 24, quick 6; quality 101, quick 8)")
    p.add_argument("--size", help="HxW (default 360x480, quick 180x240; quality: ckpt's size)")
    p.add_argument("--temporal-quality", action="store_true", help="quality mode (see above)")
    p.add_argument("--net-size", default="native",
                   help="speed mode: tools/infer.py --net-size (default native: the clip's size)")  # fmt: skip
    add_common_args(p, repeats=2)
    args = p.parse_args()
    if args.repeats is None and args.quick:
        args.repeats = 1
    device = setup(args)
    args.device = str(device)
    if args.frames is not None and args.frames < 1:
        raise ConfigError(f"--frames must be >= 1, got {args.frames}")
    summary = quality_mode(args, device) if args.temporal_quality else speed_mode(args, device)
    summary.update(device=device_label(device), machine=describe_machine(device), quick=args.quick)
    emit_summary(summary, args.json)
    return 0


if __name__ == "__main__":
    run_cli(main)
