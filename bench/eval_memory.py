"""Peak memory of evaluating N frames with T = 20 MC samples: streaming metrics vs torchmetrics.

For each N and each metric set, a fresh Python process (so peaks never carry over) loads the
model, runs MCSampler (T = 20) frame by frame on the same N frames and feeds
  seguncert     CalibrationMetrics (top-label + class-wise ECE, NLL, Brier) + ConfusionMatrix
                + UncertaintyQuality (MI, aleatoric, entropy): fixed-size histogram states;
  torchmetrics  MulticlassCalibrationError (15 bins, void ignored), which keeps every labelled
                pixel's confidence and correctness until compute().
Reported per process: peak RSS (resource.getrusage ru_maxrss, the high-water mark of the whole
process: model, sampler temporaries and metric state; the first two are the same for both, so
the difference and the slope over N are the metric's), the RSS growth from the start of the
frame loop, and the exact bytes held by the metric state tensors after the last update. The
slope is a least-squares fit, in MB per 100 frames. The model is the classifier-placement U-Net
(resnet18; the cheapest suffix, so 101 frames x T = 20 stay affordable on a CPU); untrained
unless --checkpoint: memory does not depend on the weights. Frames: CamVid val at 360x480, or
synthetic street frames at the same size when CamVid is absent (the summary says which).

    python bench/eval_memory.py                   # N = 10, 50, 101 at 360x480
    python bench/eval_memory.py --quick --json    # N = 5, 10, 20 at 120x160
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from _common import (
    add_common_args,
    camvid_root_or_none,
    camvid_val_batches,
    describe_machine,
    device_label,
    doc_parser,
    emit_summary,
    parse_hw,
    parse_ints,
    print_table,
    setup,
)

from seguncert.errors import SeguncertError, run_cli

NUM_CLASSES = 11
METRIC_SETS = ("seguncert", "torchmetrics")


def frames(root: Path | None, n: int, size, mean, std):
    """(x, label) for n frames: CamVid val in name order, else synthetic street scenes."""
    if root is not None:
        for x, label, _ in camvid_val_batches(root, n, size, mean, std):
            yield x, label
        return
    from seguncert.data.synthetic import SyntheticStreetScenes
    from seguncert.data.transforms import normalize_image

    for s in SyntheticStreetScenes(n, size=size, seed=0):
        yield normalize_image(s["image"], mean, std)[None], torch.from_numpy(s["label"])[None]


def rss_mb() -> float:
    """Current resident set size (Linux /proc), MB."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * resource.getpagesize() / 2**20
    except (OSError, ValueError, IndexError):
        return float("nan")


def peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kb / 1024.0 if sys.platform != "darwin" else kb / 2**20


def state_mb(metrics: list) -> float:
    """Bytes of every tensor a metric holds as state (tensors and lists of tensors)."""
    total = 0
    for m in metrics:
        states = m.state.values() if hasattr(m, "state") else [getattr(m, k) for k in m._defaults]
        for v in states:
            for t in v if isinstance(v, list) else [v]:
                total += t.numel() * t.element_size()
    return total / 2**20


def worker(args, device) -> dict:
    """One configuration in this (fresh) process; returns its memory figures."""
    from seguncert.io.checkpoint import load_checkpoint
    from seguncert.metrics.calibration import CalibrationMetrics
    from seguncert.metrics.quality import UncertaintyQuality
    from seguncert.metrics.segmentation import ConfusionMatrix
    from seguncert.models.build import model_from_spec
    from seguncert.uncertainty.sampler import MCSampler

    if args.checkpoint:
        trained, info = load_checkpoint(args.checkpoint)
        model = model_from_spec(info["model_spec"], dropout="classifier")
        model.load_state_dict(trained.state_dict())
        mean, std = info["meta"]["mean"], info["meta"]["std"]
    else:
        from seguncert.config import ModelConfig
        from seguncert.data.common import IMAGENET_MEAN, IMAGENET_STD
        from seguncert.models.build import build_model

        torch.manual_seed(args.seed)
        model = build_model(ModelConfig(dropout="classifier"))
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    model = model.to(device).eval()
    sampler = MCSampler(model, samples=args.mc_samples, seed=args.seed)
    log_c = float(np.log(NUM_CLASSES))
    maps = ("epistemic", "aleatoric", "entropy")
    if args.metric == "seguncert":
        cal, cm = CalibrationMetrics(NUM_CLASSES), ConfusionMatrix(NUM_CLASSES)
        uq = UncertaintyQuality(list(maps), ranges={m: (0.0, log_c) for m in maps})
        metrics = [cal, cm, uq]
    else:
        from torchmetrics.classification import MulticlassCalibrationError

        tm = MulticlassCalibrationError(NUM_CLASSES, n_bins=15, ignore_index=255).to(device)
        metrics = [tm]
    root = Path(args.root) if args.root else None
    size = parse_hw(args.size)
    start = rss_mb()
    for x, label in frames(root, args.n, size, mean, std):
        out = sampler(x.to(device))
        label = label.to(device)
        if args.metric == "seguncert":
            cal.update(out["probs"], label)
            cm.update(out["pred"], label)
            uq.update({m: out[m] for m in maps}, out["pred"] == label, label != 255)
        else:
            tm.update(out["probs"], label)
    held = state_mb(metrics)
    value = float(metrics[0].compute()["ece"] if args.metric == "seguncert" else tm.compute())
    return {"peak_rss_mb": peak_rss_mb(), "loop_growth_mb": peak_rss_mb() - start,
            "state_mb": held, "ece": value}  # fmt: skip


def slope_per_100(ns: list[int], ys: list[float]) -> float:
    return float(np.polyfit(np.asarray(ns, float), np.asarray(ys, float), 1)[0] * 100.0)


def main() -> int:
    p = doc_parser(__doc__)
    p.add_argument("--frames", help="comma-separated N (default 10,50,101; quick 5,10,20)")
    p.add_argument("--size", help="HxW (default 360x480; quick 120x160)")
    p.add_argument("--mc-samples", type=int, default=20, help="T (default 20)")
    p.add_argument("--data-root", help="CamVid root (default ../shared/datasets/camvid)")
    p.add_argument("--checkpoint", help="weights to use (placement set to classifier)")
    # internal: one configuration in a fresh process
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--metric", choices=METRIC_SETS, help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    add_common_args(p, repeats=1)
    args = p.parse_args()
    device = setup(args)
    if args.worker:
        print(json.dumps(worker(args, device)))
        return 0
    ns = parse_ints(args.frames or ("5,10,20" if args.quick else "10,50,101"), "--frames")
    size = args.size or ("120x160" if args.quick else "360x480")
    parse_hw(size)
    root, reason = camvid_root_or_none(args.data_root)
    if root is not None:
        from seguncert.data.camvid import CamVidDataset

        available = len(CamVidDataset(root, "val", cache=False))
        ns = [min(n, available) for n in ns]
    source = f"CamVid val ({root})" if root else f"synthetic street frames ({reason})"
    print(f"eval_memory on {device_label(device)}: {source}, {size}, T={args.mc_samples}, "
          f"N={ns}, one fresh process per configuration")  # fmt: skip
    res: dict[str, dict[str, dict]] = {m: {} for m in METRIC_SETS}
    for n in ns:
        for metric in METRIC_SETS:
            cmd = [sys.executable, __file__, "--worker", "--metric", metric, "--n", str(n),
                   "--size", size, "--mc-samples", str(args.mc_samples), "--device",
                   str(device), "--seed", str(args.seed)]  # fmt: skip
            cmd += ["--root", str(root)] if root else []
            cmd += ["--checkpoint", args.checkpoint] if args.checkpoint else []
            cmd += ["--threads", str(args.threads)] if args.threads else []
            r = subprocess.run(cmd, capture_output=True, text=True)
            lines = r.stdout.strip().splitlines()
            if r.returncode != 0 or not lines:
                tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
                raise SeguncertError(f"eval_memory worker ({metric}, N={n}) failed: {tail}")
            res[metric][str(n)] = json.loads(lines[-1])
    rows = []
    for n in ns:
        s, t = res["seguncert"][str(n)], res["torchmetrics"][str(n)]
        rows.append([n, s["peak_rss_mb"], t["peak_rss_mb"], s["state_mb"], t["state_mb"],
                     s["ece"], t["ece"]])  # fmt: skip
    print_table(["N", "peak MB ours", "peak MB tm", "state MB ours", "state MB tm",
                 "ECE ours", "ECE tm"], rows)  # fmt: skip
    slopes = {m: {k: slope_per_100(ns, [res[m][str(n)][k] for n in ns])
                  for k in ("peak_rss_mb", "state_mb")} for m in METRIC_SETS}  # fmt: skip
    for m, v in slopes.items():
        print(f"  {m}: peak RSS {v['peak_rss_mb']:+.1f} MB / 100 frames, "
              f"state {v['state_mb']:+.2f} MB / 100 frames")  # fmt: skip
    summary = {
        "bench": "eval_memory",
        "device": device_label(device),
        "machine": describe_machine(device),
        "quick": args.quick,
        "frames_source": "camvid_val" if root else "synthetic",
        "size": list(parse_hw(size)),
        "mc_samples": args.mc_samples,
        "n_frames": ns,
        "peak_rss_mb": {m: {n: res[m][n]["peak_rss_mb"] for n in res[m]} for m in METRIC_SETS},
        "state_mb": {m: {n: res[m][n]["state_mb"] for n in res[m]} for m in METRIC_SETS},
        "slope_mb_per_100_frames": slopes,
        "ece": {m: {n: res[m][n]["ece"] for n in res[m]} for m in METRIC_SETS},
    }
    emit_summary(summary, args.json)
    return 0


if __name__ == "__main__":
    run_cli(main)
