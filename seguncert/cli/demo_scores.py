"""What the demo video shows, in three numbers: the model's val mIoU, how well each uncertainty
map finds the animal's pixels (AUROC / FPR95, animal = positive, every other pixel of the
animal frames = negative) and how much the epistemic map rises in fog (mean MI over the fog
frames / mean MI over the clear frames before them).

Besides the MC-dropout maps, the animal is scored by the deterministic maps of
:class:`~seguncert.uncertainty.feature_density.NoveltyScorer` (one eval-mode pass): the
max-logit and energy baselines and, when the checkpoint carries a fitted feature density,
``feature_density``, which is then the demo's novelty map (:data:`NOVELTY_MAP`).

The frames are the rendered samples themselves (their ``ood`` masks are exact), run through the
same MC sampler and calibration as ``tools/infer.py`` with a fixed seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..inference.frames import frames_to_batch
from ..io.checkpoint import load_checkpoint
from ..metrics.novelty import NoveltyMetrics
from ..uncertainty.checkpoint_calibration import checkpoint_calibrator
from ..uncertainty.feature_density import NoveltyScorer, load_density, novelty_rank_scale
from ..uncertainty.sampler import MCSampler

MAPS = ("epistemic", "entropy", "aleatoric", "max_prob", "max_logit", "energy", "feature_density")
DETERMINISTIC = ("max_logit", "energy", "feature_density")  # unbounded: ranked on a log scale
NOVELTY_MAP = "feature_density"


def frame_maps(sampler, meta: dict, image: np.ndarray, scorer=None) -> dict[str, torch.Tensor]:
    """One uint8 RGB frame (H, W, 3) -> the sampler's maps cropped to (1, H, W), plus
    ``max_prob`` = 1 - max_c p̄ (higher = more novel, like the other maps) and the maps of
    ``scorer`` (a NoveltyScorer), if given."""
    h, w = image.shape[:2]
    x = frames_to_batch([image], meta, "cpu")
    with torch.inference_mode():
        out = sampler(x)
        out.update(scorer(x) if scorer is not None else {})
    maps = {k: out[k][..., :h, :w].float() for k in ("epistemic", "entropy", "aleatoric")}
    maps["max_prob"] = 1.0 - out["probs"][..., :h, :w].amax(dim=1).float()
    maps.update({k: out[k][..., :h, :w].float() for k in DETERMINISTIC if k in out})
    return maps


def demo_scores(run_dir: Path, samples: list[dict], fog, ood, mc_samples: int) -> dict:
    """``samples``: the rendered frames (dicts with ``image`` and ``ood``); ``fog`` / ``ood``:
    frame index ranges. Returns {"miou", "novelty": NoveltyMetrics.compute(), "fog_ratio",
    "fog_mi", "clear_mi"}."""
    model, info = load_checkpoint(run_dir)
    sampler = MCSampler(model, mc_samples, calibrator=checkpoint_calibrator(info), seed=0)
    density = load_density(info)
    scorer = NoveltyScorer(model, density)
    names = [k for k in MAPS if density is not None or k != "feature_density"]
    novelty = NoveltyMetrics(names, ranges={"max_prob": (0.0, 1.0)})
    clear = range(0, fog.start)
    mean_mi = {}
    for f, s in enumerate(samples):
        maps = frame_maps(sampler, info["meta"], s["image"], scorer)
        mean_mi[f] = float(maps["epistemic"].mean())
        if f in ood:
            mask = torch.from_numpy(np.asarray(s["ood"], bool))[None]
            ranked = {k: novelty_rank_scale(v) if k in DETERMINISTIC else v
                      for k, v in maps.items()}  # fmt: skip
            novelty.update(ranked, mask, torch.ones_like(mask))
    fog_mi = np.mean([mean_mi[f] for f in fog])
    clear_mi = np.mean([mean_mi[f] for f in clear])
    return {
        "miou": (info.get("metrics") or {}).get("miou"),
        "novelty": novelty.compute(),
        "fog_ratio": float(fog_mi / max(clear_mi, 1e-12)),
        "fog_mi": float(fog_mi),
        "clear_mi": float(clear_mi),
    }


def summary_lines(scores: dict, species: str) -> list[str]:
    """The lines the demo prints (README quotes their format)."""
    nov = scores["novelty"]["maps"]
    best = max(nov, key=lambda k: nov[k]["auroc"])
    e = nov["epistemic"]
    miou = scores["miou"]
    used = NOVELTY_MAP if NOVELTY_MAP in nov else best
    n = nov[used]
    per_map = ", ".join(f"{k} {v['auroc']:.3f}" for k, v in nov.items())
    lines = [
        f"best miou {miou:.4f}" if miou is not None else "best miou n/a",
        f"{species} on the road: epistemic AUROC {e['auroc']:.3f}, FPR95 {e['fpr95']:.1%}, "
        f"AP {e['ap']:.3f} (best map: {best}, AUROC {nov[best]['auroc']:.3f})",
        f"{species} on the road, novelty map {used}: AUROC {n['auroc']:.3f}, "
        f"FPR95 {n['fpr95']:.1%}, AP {n['ap']:.3f}",
        f"{species} AUROC per map: {per_map}",
        f"fog/clear epistemic ratio {scores['fog_ratio']:.2f} "
        f"(mean MI {scores['fog_mi']:.4f} vs {scores['clear_mi']:.4f} nats)",
    ]
    return lines
