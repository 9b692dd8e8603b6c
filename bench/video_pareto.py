"""Quality / cost front of video uncertainty on CamVid val 0016E5, and the default it picks for
tools/infer.py (issue 13, items 2 and 4).

For every checkpoint (--checkpoint, repeated: one per dropout placement, named by its
``model.dropout``) and network size (--net-sizes: ``train`` = the checkpoint's training pixel
count, ``native`` = the 360x480 frames as they are; tools/infer.py --net-size), over the first
--frames val frames in order (the 101 of 0016E5), scored against the 360x480 labels with the
maps upsampled as tools/infer.py does (seguncert.inference.frames):
- per-frame MC at every T in --samples: the first t samples of one T = max(--samples) draw
  (every sample's masks are seeded by its index, so these are exactly the samples
  ``MCSampler(samples=t)`` draws; the first frame checks this against such a sampler);
- temporal reuse (``TemporalMC``, tools/infer.py --temporal K [--flow]) for every K in
  --temporal, without and with flow (--temporal-sizes: the net sizes it runs at).
Quality: error-detection AUROC of entropy (total), aleatoric (expected entropy) and epistemic
(mutual information) for the fused prediction's own misclassified labelled pixels; top-label
ECE (15 bins) and NLL of the fused probabilities; mIoU. Cost: frames/s of the maps as
tools/infer.py computes them (shrink, normalise, sample, upsample; no drawing or encoding),
timed on the first --timing-frames frames (--batch frames per call for per-frame sampling,
one for temporal), rounds round-robin over the settings, median; and as a multiple of one
deterministic (eval-mode) pass at the native size, timed in the same rounds.
A setting is on the Pareto front of a map when no other setting of its checkpoint is both
faster and better on that map's AUROC. "Keeps T=20 quality" (item 4): every map's AUROC at most
--tolerance below per-frame T = 20 at the --reference network size (default ``train``, the
size tools/infer.py runs at; ``native`` was its old default, also reported) and ECE at most
0.1 points above it; the fastest such setting is printed as the recommended default.
--tool also runs tools/infer.py with its defaults on the first --tool-frames frames (a PNG
folder, 360x480: decoding, maps, drawing, encoding, statistics), alternated --repeats times
with the model's own frames/s for the same setting on the same frames, and prints both
(medians) and the issue's targets: >= 2 frames/s, T=20 quality kept, tool within 10%.

    .venv/bin/python bench/video_pareto.py --checkpoint runs/place_central --threads 2 --json
    .venv/bin/python bench/video_pareto.py --checkpoint A --checkpoint B --tool --json
    .venv/bin/python bench/video_pareto.py --checkpoint runs/place_central --quick --json
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import (
    add_common_args,
    camvid_val_batches,
    describe_machine,
    device_label,
    doc_parser,
    emit_summary,
    parse_ints,
    print_table,
    require_camvid,
    setup,
    verdict,
)

from seguncert.errors import ConfigError, SeguncertError, run_cli

MAPS = ("entropy", "aleatoric", "epistemic")
ECE_SLACK = 0.001


def read_frames(root: Path, n: int, meta) -> list[tuple[np.ndarray, torch.Tensor]]:
    """[(uint8 RGB 360x480, label (H, W) long)] for the first ``n`` val frames in order."""
    return [(rgb, label[0]) for _, label, rgb in camvid_val_batches(root, n, None, meta["mean"],
                                                                    meta["std"])]  # fmt: skip


class Scores:
    """Streaming quality of one setting: AUROC of each map, ECE / NLL, mIoU."""

    def __init__(self, num_classes: int) -> None:
        from seguncert.metrics.calibration import CalibrationMetrics
        from seguncert.metrics.quality import UncertaintyQuality
        from seguncert.metrics.segmentation import ConfusionMatrix

        log_c = math.log(num_classes)
        self.quality = UncertaintyQuality(list(MAPS), ranges=dict.fromkeys(MAPS, (0.0, log_c)))
        self.calibration = CalibrationMetrics(num_classes)
        self.confusion = ConfusionMatrix(num_classes)

    def update(self, out: dict, label: torch.Tensor) -> None:
        """``out``: one frame's upsampled tensors (probs (C, H, W), pred and maps (H, W))."""
        label = label.to(out["pred"].device)[None]
        pred = out["pred"][None].long()
        self.quality.update({m: out[m][None] for m in MAPS}, pred == label, label != 255)
        self.calibration.update(out["probs"][None], label)
        self.confusion.update(pred, label)

    def result(self) -> dict:
        q, c = self.quality.compute(), self.calibration.compute()
        res = {f"auroc_{m}": q["maps"][m]["auroc"] for m in MAPS}
        return {**res, "ece": c["ece"], "nll": c["nll"], "miou": self.confusion.compute()["miou"]}


def prefix_maps(samples: torch.Tensor, t: int) -> dict:
    """Maps of the first ``t`` samples (T, B, C, h, w): the MCSampler formulas."""
    from seguncert.uncertainty.maps import expected_entropy, predictive_entropy

    p = samples[:t]
    probs = p.mean(0)
    total, alea = predictive_entropy(probs), expected_entropy(p)
    return {"probs": probs, "pred": probs.argmax(1), "entropy": total, "aleatoric": alea,
            "epistemic": (total - alea).clamp_min(0.0)}  # fmt: skip


def check_prefix(model, x, net_hw, t: int, out_samples, opts) -> None:
    """The prefix of the T = max draw equals MCSampler(samples=t)'s own maps on this frame."""
    from seguncert.uncertainty.sampler import MCSampler

    ref = MCSampler(model, samples=t, **opts)(x)
    mine = prefix_maps(out_samples, t)
    h, w = net_hw
    diff = float((mine["epistemic"] - ref["epistemic"])[..., :h, :w].abs().max())
    if diff > 1e-4:
        raise SeguncertError(f"prefix of the T-sample draw differs from T={t} sampling by {diff}")


def per_frame_quality(model, info, frames, ts, net, args, device) -> dict[int, dict]:
    """{t: scores} of per-frame sampling at network size ``net`` (None: native)."""
    from seguncert.inference.frames import frames_to_batch, network_size, shrink, upsample_maps
    from seguncert.uncertainty.checkpoint_calibration import checkpoint_calibrator
    from seguncert.uncertainty.sampler import MCSampler

    opts = {"seed": args.seed, "calibrator": checkpoint_calibrator(info)}
    sampler = MCSampler(model, samples=max(ts), return_samples=True, **opts)
    c = len(info["meta"]["class_names"])
    scores = {t: Scores(c) for t in ts}
    for i, (rgb, label) in enumerate(frames):
        hw = rgb.shape[:2]
        net_hw = network_size(hw, net)
        x = frames_to_batch(shrink([rgb], net_hw), info["meta"], device)
        with torch.inference_mode():
            samples = sampler(x)["samples"]
            if i == 0 and len(ts) > 1:
                check_prefix(model, x, net_hw, sorted(ts)[-2], samples, opts)
            for t in ts:
                out = upsample_maps(prefix_maps(samples, t), net_hw, hw)
                scores[t].update({k: v[0] for k, v in out.items()}, label)
    return {t: s.result() for t, s in scores.items()}


def make_predictor(model, info, setting: dict, args, device):
    """tools/infer.py's predictor for a setting {"t", "k", "flow", "net"}."""
    from seguncert.inference.frames import FramePredictor, TemporalPredictor
    from seguncert.uncertainty.checkpoint_calibration import checkpoint_calibrator
    from seguncert.uncertainty.sampler import MCSampler
    from seguncert.uncertainty.temporal import TemporalMC

    opts = {"seed": args.seed, "calibrator": checkpoint_calibrator(info)}
    meta, net = info["meta"], setting["net"]
    if setting["k"]:
        temporal = TemporalMC(model, setting["k"], flow=setting["flow"], **opts)
        return TemporalPredictor(temporal, meta, device, None, net)
    if setting["t"] == 0:
        return FramePredictor(Deterministic(model), meta, device, None, net)
    return FramePredictor(MCSampler(model, samples=setting["t"], **opts), meta, device, None, net)


class Deterministic:
    """One eval-mode pass (dropout off): the unit of inference cost."""

    def __init__(self, model) -> None:
        self.model = model

    def __call__(self, x: torch.Tensor) -> dict:
        from seguncert.uncertainty.maps import predictive_entropy

        p = self.model.eval()(x)["logits"].float().softmax(1)
        return {"probs": p, "pred": p.argmax(1), "entropy": predictive_entropy(p)}


def temporal_quality(model, info, frames, setting, args, device) -> dict:
    predict = make_predictor(model, info, setting, args, device)
    predict.reset()
    scores = Scores(len(info["meta"]["class_names"]))
    for rgb, label in frames:
        scores.update(predict.predict([rgb])[0], label)
    return scores.result()


def timing(model, info, frames, settings: dict, args, device) -> dict[str, float]:
    """Median frames/s of every setting over --repeats round-robin rounds (after a warm-up)."""
    rgbs = [rgb for rgb, _ in frames[: args.timing_frames]]
    predictors = {n: make_predictor(model, info, s, args, device) for n, s in settings.items()}
    seconds: dict[str, list[float]] = {n: [] for n in settings}
    for r in range(args.warmup + args.repeats):
        for name, predict in predictors.items():
            predict.reset()
            step = 1 if not predict.batched else args.batch
            todo = rgbs if r >= args.warmup else rgbs[:step]
            t0 = time.perf_counter()
            for j in range(0, len(todo), step):
                predict(todo[j : j + step])  # numpy maps, as the tool draws them: synchronises
            if r >= args.warmup:
                seconds[name].append(time.perf_counter() - t0)
    return {n: len(rgbs) / statistics.median(v) for n, v in seconds.items()}


def setting_grid(ts, ks, net_sizes, temporal_sizes, train_hw) -> dict[str, dict]:
    grid = {"deterministic": {"t": 0, "k": 0, "flow": False, "net": None, "size": "native"}}
    for size in net_sizes:
        net = train_hw if size == "train" else None
        for t in ts:
            grid[f"T{t}@{size}"] = {"t": t, "k": 0, "flow": False, "net": net, "size": size}
        if size in temporal_sizes:
            for k in ks:
                for flow in (False, True):
                    name = f"temporal{k}{'+flow' if flow else ''}@{size}"
                    grid[name] = {"t": 0, "k": k, "flow": flow, "net": net, "size": size}
    return grid


def pareto(rows: dict[str, dict], key: str) -> set[str]:
    """Settings no other setting beats on both frames/s and ``key`` (higher is better)."""
    front = set()
    for n, r in rows.items():
        if not any(o["fps"] > r["fps"] and o[key] > r[key] for m, o in rows.items() if m != n):
            front.add(n)
    return front


def keeps_quality(r: dict, ref: dict, tol: float) -> bool:
    return all(r[f"auroc_{m}"] >= ref[f"auroc_{m}"] - tol for m in MAPS) and (
        r["ece"] <= ref["ece"] + ECE_SLACK
    )


def load(path: str, device) -> tuple:
    """(model, sidecar, training size (H, W) or None) of a checkpoint."""
    from seguncert.io.checkpoint import load_checkpoint

    model, info = load_checkpoint(path, map_location=device)
    train_hw = tuple((info.get("config") or {}).get("data", {}).get("size") or ()) or None
    return model, info, train_hw


def run_checkpoint(path: str, root: Path, args, device) -> tuple[str, dict]:
    from seguncert.inference.frames import network_size

    model, info, train_hw = load(path, device)
    name = (info.get("config") or {}).get("model", {}).get("dropout", Path(path).name)
    frames = read_frames(root, args.frames, info["meta"])
    ts, ks = parse_ints(args.samples, "--samples"), parse_ints(args.temporal, "--temporal")
    grid = setting_grid(ts, ks, args.net_sizes.split(","), args.temporal_sizes.split(","), train_hw)
    print(f"{name}: {path}, {len(frames)} frames at {frames[0][0].shape[0]}x"
          f"{frames[0][0].shape[1]}, network at {network_size(frames[0][0].shape[:2], train_hw)}"
          " (train) / native", flush=True)  # fmt: skip
    rows: dict[str, dict] = {}
    for size in args.net_sizes.split(","):
        t0 = time.perf_counter()
        net = train_hw if size == "train" else None
        for t, r in per_frame_quality(model, info, frames, ts, net, args, device).items():
            rows[f"T{t}@{size}"] = r
        print(f"  per-frame quality @{size}: {time.perf_counter() - t0:.0f} s", flush=True)
    for n, s in grid.items():
        if s["k"]:
            t0 = time.perf_counter()
            rows[n] = temporal_quality(model, info, frames, s, args, device)
            print(f"  {n}: {time.perf_counter() - t0:.0f} s", flush=True)
    fps = timing(model, info, frames, grid, args, device)
    det = fps.pop("deterministic")
    for n, r in rows.items():
        r.update(fps=fps[n], cost=det / fps[n])
    return name, {"rows": rows, "deterministic_fps": det, "settings": grid}


def keeping(rows: dict, ref_name: str, tol: float) -> list[str]:
    """Settings that keep the quality of ``rows[ref_name]`` (none when it was not run)."""
    ref = rows.get(ref_name)
    return [n for n, r in rows.items() if ref is not None and keeps_quality(r, ref, tol)]


def report(name: str, res: dict, args) -> dict:
    rows = res["rows"]
    fronts = {m: pareto(rows, f"auroc_{m}") for m in MAPS}
    t_max = max(parse_ints(args.samples, "--samples"))
    ok = keeping(rows, f"T{t_max}@{args.reference}", args.tolerance)
    ok_native = keeping(rows, f"T{t_max}@native", args.tolerance)
    best = max(ok, key=lambda n: rows[n]["fps"]) if ok else None
    table = []
    for n, r in sorted(rows.items(), key=lambda kv: -kv[1]["fps"]):
        mark = "".join(k for k, m in zip("HAM", MAPS) if n in fronts[m])
        keeps = "/".join(w for w, lst in (("ref", ok), ("native", ok_native)) if n in lst)
        table.append([n, r["fps"], r["cost"], r["auroc_entropy"], r["auroc_aleatoric"],
                      r["auroc_epistemic"], 100 * r["ece"], r["nll"], 100 * r["miou"],
                      mark, keeps])  # fmt: skip
    print_table(["setting", "frames/s", "x det", "AUROC H", "AUROC alea", "AUROC MI", "ECE %",
                 "NLL", "mIoU %", "front", f"keeps T{t_max}"], table,
                f"{name}: deterministic pass {res['deterministic_fps']:.2f} frames/s; front = "
                "Pareto front of frames/s vs that map's AUROC (H entropy, A aleatoric, "
                f"M epistemic); keeps T{t_max} = within the tolerance of T{t_max}@"
                f"{args.reference} (ref) / @native")  # fmt: skip
    print(f"{name}: fastest setting that keeps per-frame T={t_max} quality: {best}")
    return {"fronts": {m: sorted(f) for m, f in fronts.items()}, "keeps_t20": ok,
            "keeps_t20_native": ok_native, "recommended": best}  # fmt: skip


def default_setting(train_hw) -> tuple[str, dict]:
    """(name, setting) of tools/infer.py's defaults."""
    from seguncert.cli.infer import FLAGS

    d = {flag: kw.get("default") for flag, kw, _ in FLAGS}
    t, k, size = d["--mc-samples"], d["--temporal"], d["--net-size"]
    size = "native" if size == "native" else "train"
    name = f"temporal{k}@{size}" if k else f"T{t}@{size}"
    net = train_hw if size == "train" else None
    return name, {"t": t, "k": k, "flow": bool(d["--flow"]), "net": net, "size": size}


def tool_check(path: str, root: Path, args, device) -> dict:
    """tools/infer.py with its defaults on the first --tool-frames val frames (a PNG folder),
    alternated --repeats times with the model's own frames/s for the same setting on the same
    frames (maps only, --batch frames per call): medians of both."""
    from video_fps import run_infer, write_clip

    model, info, train_hw = load(path, device)
    name, setting = default_setting(train_hw)
    predict = make_predictor(model, info, setting, args, device)
    step = args.batch if predict.batched else 1
    rgbs = [rgb for rgb, _ in read_frames(root, args.tool_frames, info["meta"])]
    tool, model_fps = [], []
    with tempfile.TemporaryDirectory() as tmp:
        clip = write_clip(Path(tmp) / "clip", "camvid", len(rgbs), None, str(root))
        args.flow = setting["flow"]
        for _ in range(args.repeats):
            predict.reset()
            t0 = time.perf_counter()
            for j in range(0, len(rgbs), step):
                predict(rgbs[j : j + step])
            model_fps.append(len(rgbs) / (time.perf_counter() - t0))
            tool.append(run_infer(path, clip, Path(tmp), setting["t"], setting["k"], args))
    res = {"setting": name, "frames": len(rgbs), "fps": statistics.median(r["fps"] for r in tool),
           "fps_runs": [r["fps"] for r in tool], "model_fps": statistics.median(model_fps),
           "model_fps_runs": model_fps}  # fmt: skip
    res["tool_over_model"] = res["fps"] / res["model_fps"]
    print(f"tools/infer.py with its defaults ({name}, {len(rgbs)} frames, {args.repeats} runs): "
          f"{res['fps']:.2f} frames/s; the model alone {res['model_fps']:.2f}")  # fmt: skip
    return res


def main() -> int:
    p = doc_parser(__doc__)
    p.add_argument("--checkpoint", action="append", required=True, help="run folder (repeatable)")
    p.add_argument("--data-root", help="CamVid root (default ../shared/datasets/camvid)")
    p.add_argument("--samples", default="1,2,4,8,20", help="T values (default 1,2,4,8,20)")
    p.add_argument("--temporal", default="2,4", help="temporal K values (default 2,4)")
    p.add_argument("--net-sizes", default="train,native", help="train and/or native")
    p.add_argument("--temporal-sizes", default="train", help="net sizes temporal runs at")
    p.add_argument("--frames", type=int, help="val frames in order (default 101, quick 4)")
    p.add_argument("--timing-frames", type=int, help="frames timed (default 12, quick 4)")
    p.add_argument("--batch", type=int, default=4, help="frames per call, per-frame (default 4)")
    p.add_argument("--tolerance", type=float, default=0.01, help="AUROC slack vs T20 (0.01)")
    p.add_argument("--reference", choices=("train", "native"), default="train",
                   help="net size of the per-frame T=20 reference (default train)")  # fmt: skip
    p.add_argument("--tool", action="store_true", help="also time tools/infer.py's defaults")
    p.add_argument("--tool-frames", type=int, default=24, help="frames of the --tool clip (24)")
    add_common_args(p, repeats=2)
    args = p.parse_args()
    device = setup(args)
    args.device = str(device)
    args.frames = args.frames or (4 if args.quick else 101)
    args.timing_frames = min(args.frames, args.timing_frames or (4 if args.quick else 12))
    if args.quick:
        args.samples, args.temporal = "1,2,4", "2"
    for flag in ("frames", "timing_frames", "batch"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be >= 1")
    sizes = args.net_sizes.split(",") + args.temporal_sizes.split(",")
    bad = set(sizes) - {"train", "native", ""}
    if bad:
        raise ConfigError(f"--net-sizes / --temporal-sizes take train and native, not {bad}")
    root = require_camvid(args.data_root)
    summary = {"bench": "video_pareto", "checkpoints": {}}
    for path in args.checkpoint:
        name, res = run_checkpoint(path, root, args, device)
        res.update(report(name, res, args))
        res.pop("settings")
        summary["checkpoints"][name] = {"path": path, **res}
    if args.tool:
        tool = tool_check(args.checkpoint[0], root, args, device)
        first = next(iter(summary["checkpoints"].values()))
        keeps = tool["setting"] in first["keeps_t20"]
        tool["targets"] = {"fps_ge_2": tool["fps"] >= 2.0, "keeps_t20_quality": keeps,
                           "tool_within_10pct": tool["tool_over_model"] >= 0.9}  # fmt: skip
        print(f"tool / model frames/s: {tool['tool_over_model']:.2f} (target >= 0.90); "
              + ", ".join(f"{k} {verdict(v)}" for k, v in tool["targets"].items()))  # fmt: skip
        summary["tool"] = tool
    summary.update(frames=args.frames, device=device_label(device),
                   machine=describe_machine(device), quick=args.quick)  # fmt: skip
    emit_summary(summary, args.json)
    return 0


if __name__ == "__main__":
    run_cli(main)
