"""Where does the uncertainty go? Aleatoric vs epistemic under fog, night and an unseen object.

On procedural street frames (seguncert's synthetic renderer; the val seeds, never trained on)
this runs a segmentation or joint checkpoint with MC dropout (T samples) on the same scenes
clean, with fog (severity 3 and 5), at night (severity 5) and with an out-of-distribution animal
on the road, and reports per condition the mean of each map over all labelled pixels:

  seg_aleatoric  expected entropy (nats)        seg_epistemic  mutual information (nats)
  depth_alea_sd  mean predicted σ (m)           depth_epi_sd   σ of the sampled depths (m)

plus, on the OOD frames, the same means over the animal's pixels only, and the AUROC of each map
for telling the animal's pixels from the rest. For joint checkpoints it also reports where
aleatoric depth σ is highest: at depth discontinuities (|Δ log depth| > 0.1 to a 4-neighbour)
vs smooth pixels, and by distance (< 10 m, 10-30 m, > 30 m). Kendall & Gal 2017 predict:
epistemic up on fog and the OOD object, aleatoric about flat; aleatoric high at discontinuities
and far away.

    python bench/synthetic_shift.py --checkpoint runs/synthetic_joint --frames 24 --json
"""

from __future__ import annotations

import argparse
import math

import numpy as np
from _common import REPO, add_common_args, describe_machine, emit_summary, print_table, setup

from seguncert.data.synthetic import FrameParams, render_frame, sample_seed
from seguncert.data.transforms import build_eval_transform
from seguncert.errors import ConfigError, run_cli
from seguncert.io.checkpoint import load_checkpoint
from seguncert.uncertainty.sampler import MCSampler

CONDITIONS = {
    "clean": {},
    "fog3": {"shift": "fog", "severity": 3},
    "fog5": {"shift": "fog", "severity": 5},
    "night5": {"shift": "night", "severity": 5},
    "ood": {"ood": True},
}


def frame_maps(sampler, transform, sample: dict) -> dict[str, np.ndarray]:
    """MC maps of one rendered sample, cropped back to its size, as numpy (H, W)."""
    x = transform(sample)
    h, w = (int(v) for v in x["orig_size"])
    out = sampler(x["image"][None])
    maps = {}
    if "aleatoric" in out and "probs" in out:
        maps["seg_aleatoric"] = out["aleatoric"][0, :h, :w]
        maps["seg_epistemic"] = out["epistemic"][0, :h, :w]
    key_a = "depth_aleatoric_var" if "probs" in out else "aleatoric_var"
    if key_a in out:
        key_e = key_a.replace("aleatoric", "epistemic")
        maps["depth_alea_sd"] = out[key_a][0, :h, :w].sqrt()
        maps["depth_epi_sd"] = out[key_e][0, :h, :w].sqrt()
    return {k: v.float().cpu().numpy() for k, v in maps.items()}


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Exact AUROC (Mann-Whitney U with average ranks for ties)."""
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def discontinuities(depth: np.ndarray, thresh: float = 0.1) -> np.ndarray:
    """Pixels whose log depth differs by more than ``thresh`` from a 4-neighbour."""
    d = np.log(np.maximum(depth, 1e-3))
    edge = np.zeros(d.shape, bool)
    dy, dx = np.abs(np.diff(d, axis=0)) > thresh, np.abs(np.diff(d, axis=1)) > thresh
    edge[1:] |= dy
    edge[:-1] |= dy
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    return edge


def run(args) -> dict:
    device = setup(args)
    model, info = load_checkpoint(args.checkpoint, map_location=device)
    meta = info["meta"]
    if meta["task"] not in ("segmentation", "joint", "depth"):
        raise ConfigError(f"{args.checkpoint}: unknown task {meta['task']!r}")
    if info["config"]["data"].get("dataset") != "synthetic":
        raise ConfigError(f"{args.checkpoint}: not trained on synthetic scenes (data.dataset)")
    sampler = MCSampler(model, samples=args.mc_samples, seed=args.seed)
    transform = build_eval_transform(meta["mean"], meta["std"])
    val_seed = int(info["config"]["data"]["synthetic_seed"]) + 10_000 + 777  # unseen scenes
    size = tuple(int(v) for v in args.size.lower().split("x"))

    sums: dict[str, dict[str, list[float]]] = {c: {} for c in CONDITIONS}
    ood_scores: dict[str, list[np.ndarray]] = {}
    ood_labels: list[np.ndarray] = []
    where: dict[str, list[float]] = {}
    for i in range(args.frames):
        seed = sample_seed(val_seed, i)
        for cond, kw in CONDITIONS.items():
            p = FrameParams.from_seed(seed)
            sample = render_frame(p, size, kw.get("shift"), kw.get("severity", 0),
                                  ood=kw.get("ood", False))  # fmt: skip
            maps = frame_maps(sampler, transform, sample)
            labelled = sample["label"] != 255
            ood = sample.get("ood")
            for k, v in maps.items():
                sums[cond].setdefault(k, []).append(float(v[labelled].mean()))
                if cond == "ood" and ood is not None and ood.any():
                    sums[cond].setdefault(k + "@animal", []).append(float(v[ood].mean()))
                    ood_scores.setdefault(k, []).append(v.ravel())
            if cond == "ood" and ood is not None and ood.any():
                ood_labels.append(ood.ravel())
            if cond == "clean" and "depth_alea_sd" in maps:
                depth, a = sample["depth"], maps["depth_alea_sd"]
                edge = discontinuities(depth)
                for name, m in {
                    "edge": edge, "smooth": ~edge, "near<10m": depth < 10,
                    "mid10-30m": (depth >= 10) & (depth < 30), "far>30m": depth >= 30,
                }.items():  # fmt: skip
                    if m.any():
                        where.setdefault(name, []).append(float(a[m].mean()))
        print(f"frame {i + 1}/{args.frames}", flush=True)

    table = {c: {k: float(np.mean(v)) for k, v in d.items()} for c, d in sums.items()}
    auroc_by_map = {}
    if ood_labels:
        y = np.concatenate(ood_labels)
        for k, chunks in ood_scores.items():
            auroc_by_map[k] = auroc(np.concatenate(chunks), y)
    return {
        "bench": "synthetic_shift",
        "checkpoint": str(args.checkpoint),
        "task": meta["task"],
        "frames": args.frames,
        "size": list(size),
        "mc_samples": args.mc_samples,
        "means": table,
        "ood_auroc": auroc_by_map,
        "depth_aleatoric_sd_by_region": {k: float(np.mean(v)) for k, v in where.items()},
        "machine": describe_machine(device),
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", default=str(REPO / "runs" / "synthetic_joint"))
    p.add_argument("--frames", type=int, default=24, help="scenes per condition (default 24)")
    p.add_argument("--size", default="120x160", help="HxW of the rendered frames")
    p.add_argument("--mc-samples", type=int, default=20)
    add_common_args(p, repeats=1)
    args = p.parse_args(argv)
    if args.quick:
        args.frames, args.mc_samples = min(args.frames, 4), min(args.mc_samples, 8)
    res = run(args)
    keys = sorted({k for d in res["means"].values() for k in d})
    rows = [[c] + [f"{res['means'][c].get(k, math.nan):.4f}" for k in keys] for c in res["means"]]
    print_table(["condition", *keys], rows)
    if res["ood_auroc"]:
        print("AUROC animal vs rest: "
              + ", ".join(f"{k} {v:.3f}" for k, v in res["ood_auroc"].items()))  # fmt: skip
    if res["depth_aleatoric_sd_by_region"]:
        print("depth aleatoric σ (m) by region: " + ", ".join(
            f"{k} {v:.3f}" for k, v in res["depth_aleatoric_sd_by_region"].items()))  # fmt: skip
    emit_summary(res, args.json)


if __name__ == "__main__":
    run_cli(main)
