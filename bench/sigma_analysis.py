"""Why the learned logit noise σ ranks errors below chance, and what to show instead.

Over CamVid val (T MC samples, S logit-noise draws): error AUROC of raw σ² of the predicted
class (``logit_var``), of the noise's effect on the softmax (``noise_aleatoric`` = the entropy
the noise adds, mean_t H[p_t] - H[softmax f_t]), of the expected entropy (``aleatoric``, the
overlay's aleatoric panel) and of the predictive entropy; the rank correlation of σ² with the
top-2 logit margin of the mean logits; mean σ² by margin quintile; and every map on object
boundaries vs inside objects.

    .venv/bin/python bench/sigma_analysis.py --checkpoint runs/camvid_base40 --threads 2 --json
"""

from __future__ import annotations

import numpy as np
import torch
from _common import DEFAULT_CAMVID, add_common_args, doc_parser, emit_summary, setup

from seguncert.data.camvid import CamVidDataset
from seguncert.data.transforms import build_eval_transform
from seguncert.errors import run_cli
from seguncert.evaluate.segmentation import label_boundaries
from seguncert.io.checkpoint import load_checkpoint
from seguncert.metrics.quality import UncertaintyQuality
from seguncert.uncertainty.sampler import MCSampler

MAPS = ("logit_var", "noise_aleatoric", "aleatoric", "entropy", "epistemic")


def parse_args(argv=None):
    p = doc_parser(__doc__)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data-root", default=str(DEFAULT_CAMVID))
    p.add_argument("--mc-samples", type=int, default=10)
    p.add_argument("--noise-samples", type=int, default=8)
    p.add_argument("--pixels", type=int, default=4000, help="pixels per frame for correlations")
    add_common_args(p, repeats=1)
    return p.parse_args(argv)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = a.argsort().argsort().astype(float), b.argsort().argsort().astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


def frame_stats(out: dict, label: torch.Tensor, g: torch.Generator, n: int):
    z = out["logits"].mean(0)[0]  # (C, H, W) mean logits over the dropout samples
    top2 = z.topk(2, 0).values
    margin = (top2[0] - top2[1]).reshape(-1)
    valid = (label[0] != 255).reshape(-1)
    idx = torch.nonzero(valid).squeeze(1)
    pick = idx[torch.randperm(idx.numel(), generator=g)[:n]]
    sigma2 = out["logit_var"][0].reshape(-1)
    return margin[pick].numpy(), sigma2[pick].numpy()


def main(argv=None) -> int:
    args = parse_args(argv)
    setup(args)
    model, info = load_checkpoint(args.checkpoint)
    meta = info["meta"]
    size = tuple((info.get("config") or {}).get("data", {}).get("size") or (180, 240))
    val = CamVidDataset(
        args.data_root, "val", size=size, transform=build_eval_transform(meta["mean"], meta["std"])
    )
    sampler = MCSampler(
        model, args.mc_samples, seed=args.seed, noise_samples=args.noise_samples, return_logits=True
    )
    q = UncertaintyQuality(list(MAPS), n_bins=4096)
    region = {k: [0.0, 0.0] for k in MAPS}
    counts = [0, 0]
    margins, sigmas = [], []
    g = torch.Generator().manual_seed(args.seed)
    n = 8 if args.quick else len(val)
    with torch.inference_mode():
        for i in range(n):
            s = val[i]
            h, w = s["orig_size"].tolist()
            out = sampler(s["image"][None])
            out = {k: v[..., :h, :w] for k, v in out.items() if v.dim() >= 3}
            label = s["label"][None, :h, :w]
            valid = label != 255
            maps = {k: out[k].float() for k in MAPS}
            q.update(maps, (out["pred"] == label) & valid, valid)
            edge = label_boundaries(label) & valid
            for j, mask in enumerate((edge, valid & ~edge)):
                counts[j] += int(mask.sum())
                for k in MAPS:
                    region[k][j] += float(maps[k][mask].sum())
            m, s2 = frame_stats(out, label, g, args.pixels)
            margins.append(m)
            sigmas.append(s2)
    margin, sigma2 = np.concatenate(margins), np.concatenate(sigmas)
    edges = np.quantile(margin, [0.2, 0.4, 0.6, 0.8])
    bins = np.digitize(margin, edges)
    res = {
        "auroc": {k: v["auroc"] for k, v in q.compute()["maps"].items()},
        "spearman_sigma2_margin": spearman(sigma2, margin),
        "sigma2_by_margin_quintile": [float(sigma2[bins == b].mean()) for b in range(5)],
        "boundary_over_interior": {
            k: (v[0] / counts[0]) / max(v[1] / counts[1], 1e-12) for k, v in region.items()
        },
        "boundary": {k: v[0] / counts[0] for k, v in region.items()},
        "interior": {k: v[1] / counts[1] for k, v in region.items()},
    }
    print("error AUROC: " + ", ".join(f"{k} {v:.3f}" for k, v in res["auroc"].items()))
    print(f"Spearman(sigma^2, top-2 logit margin) = {res['spearman_sigma2_margin']:.3f}")
    print(
        "mean sigma^2 by margin quintile (low -> high margin): "
        + ", ".join(f"{v:.3f}" for v in res["sigma2_by_margin_quintile"])
    )
    print(
        "boundary / interior: "
        + ", ".join(f"{k} {v:.2f}x" for k, v in res["boundary_over_interior"].items())
    )
    emit_summary({"bench": "sigma_analysis", "checkpoint": args.checkpoint, **res}, args.json)
    return 0


if __name__ == "__main__":
    run_cli(main)
