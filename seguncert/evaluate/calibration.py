"""Fit calibrators on a split's MC predictive, pick one on held-out frames, store it.

Frames: the calibration frames are split in order (video frames are correlated, so a random
split would leak) into a fitting part (the first 2/3) and a selection part (the rest). Every
requested kind is fitted on the first, scored by the NLL of the calibrated MC predictive on the
second, and the lowest wins; it is then refitted on all calibration frames and stored in the
checkpoint sidecar (``calibration``, with the selection table in ``calibration_fit``). With
``--calibration-shift`` the chosen kind is refitted on the calibration frames plus one corrupted
copy of each per corruption family (:mod:`~seguncert.evaluate.shift_families`), which keeps its
confidence honest under degraded inputs at a small cost on clean ones (docs/benchmarks.md).

Data per image: the T MC samples' logits (and learned logit log-variance) at
:data:`PIXELS_PER_IMAGE` random labelled pixels, for the pixel-wise kinds, and one random
:data:`CROP` x :data:`CROP` window, for ``local_temperature`` (which needs neighbourhoods).
"""

from __future__ import annotations

import sys
import time

import torch
from torch.utils.data import Subset

from ..errors import ConfigError
from ..io.checkpoint import update_sidecar
from ..tasks import checkpoint_task
from ..uncertainty.calibrator_fit import fit_calibrator, predictive_nll
from ..uncertainty.calibrators import KINDS
from ..uncertainty.checkpoint_calibration import checkpoint_calibrator
from ..uncertainty.sampler import MCSampler
from .shift_families import FAMILIES, FamilyCorruptions

ALL_KINDS = (
    "temperature",
    "class_temperature",
    "vector",
    "dirichlet",
    "logit_adjust",
    "local_temperature",
)
PIXELS_PER_IMAGE = 2048
SHIFT_COPY_PIXELS = 512  # per corrupted copy: 4 families add as many pixels as the clean frame
CROP = 48
MAX_ITER = 60  # L-BFGS iterations per fit: the parametric kinds converge well before
FIT_SHARE = 2 / 3

stored_calibrator = checkpoint_calibrator


def parse_kinds(text: str) -> tuple[str, ...]:
    kinds = ALL_KINDS if text == "all" else tuple(k.strip() for k in text.split(",") if k.strip())
    bad = [k for k in kinds if k not in KINDS or k == "identity"]
    if bad or not kinds:
        raise ConfigError(f"--calibrate {text!r}: choose from all, {', '.join(ALL_KINDS)}")
    return kinds


def split_in_order(dataset, fraction: float):
    """(first ``fraction`` of the frames, the rest), in order."""
    n = len(dataset)
    k = min(n - 1, max(1, round(n * fraction)))
    if n < 2:
        raise ConfigError(f"calibrating on the evaluated split needs 2+ frames, it has {n}")
    return Subset(dataset, range(k)), Subset(dataset, range(k, n))


def _sample_image(
    out: dict, label: torch.Tensor, g: torch.Generator, n_pixels: int = PIXELS_PER_IMAGE
) -> tuple[dict, dict]:
    """(pixel batch of ``n_pixels``, crop batch) from one image's logits (T, 1, C, H, W)."""
    z, lv = out["logits"], out.get("logit_log_var")
    h, w = label.shape[-2:]
    idx = torch.nonzero(label.reshape(-1) != 255).squeeze(1)
    pick = idx[torch.randperm(idx.numel(), generator=g)[:n_pixels]]

    def pixels(t):
        return t.reshape(*t.shape[:3], h * w)[..., pick].unsqueeze(3)

    pix = {"logits": pixels(z), "labels": label.reshape(1, -1)[:, pick].view(1, 1, -1)}
    ch, cw = min(CROP, h), min(CROP, w)
    y0 = int(torch.randint(0, h - ch + 1, (1,), generator=g))
    x0 = int(torch.randint(0, w - cw + 1, (1,), generator=g))
    crop = {
        "logits": z[..., y0 : y0 + ch, x0 : x0 + cw],
        "labels": label[..., y0 : y0 + ch, x0 : x0 + cw].reshape(1, ch, cw),
    }
    if lv is not None:
        pix["log_var"] = pixels(lv)
        crop["log_var"] = lv[..., y0 : y0 + ch, x0 : x0 + cw]
    return pix, crop


@torch.inference_mode()
def collect(model, dataset, cfg, n_pixels: int = PIXELS_PER_IMAGE) -> tuple[list, list]:
    """Per-image pixel and crop batches of the MC samples' raw logits (see the module doc)."""
    device = next(model.parameters()).device
    sampler = MCSampler(
        model, cfg.mc_samples, cfg.memory_budget_mb, seed=cfg.seed, return_logits=True
    )
    g = torch.Generator().manual_seed(cfg.seed)
    pixels, crops = [], []
    for i in range(len(dataset)):
        s = dataset[i]
        h, w = (int(v) for v in s["orig_size"])
        out = sampler(s["image"][None].to(device))
        out = {k: out[k][..., :h, :w].cpu() for k in ("logits", "logit_log_var") if k in out}
        p, c = _sample_image(out, s["label"][:h, :w][None], g, n_pixels)
        pixels.append(p)
        crops.append(c)
    return pixels, crops


def _fit(kind, pixels, crops, weights, cfg):
    data = crops if KINDS[kind].spatial else pixels
    return fit_calibrator(
        kind,
        data,
        class_weights=weights,
        noise_samples=cfg.noise_samples,
        seed=cfg.seed,
        max_iter=MAX_ITER,
    )


def select(kinds, pixels, crops, weights, cfg, refit=True) -> tuple[object, list[dict], dict]:
    """Fit every kind on the first part, score on the rest; refit them on all frames (unless
    ``refit`` is False). Returns (the lowest held-out NLL's calibrator, the table, every
    (re)fitted calibrator)."""
    k = max(1, round(len(pixels) * FIT_SHARE))
    table, fitted = [], {}
    for kind in ("identity", *kinds):
        t0 = time.monotonic()
        cal = _fit(kind, pixels[:k], crops[:k], weights, cfg)
        held = crops[k:] if KINDS[kind].spatial else pixels[k:]
        nll = predictive_nll(cal, held, cfg.noise_samples, cfg.seed) if held else float("nan")
        table.append({"kind": kind, "heldout_nll": nll, "fitted": cal.describe()})
        fitted[kind] = _fit(kind, pixels, crops, weights, cfg) if refit else cal
        if cfg.progress:
            print(f"fitted {kind} in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    best = min((r for r in table if r["kind"] != "identity"), key=lambda r: r["heldout_nll"])
    return fitted[best["kind"]], table, fitted


def collect_families(model, raw, cfg, transform, subset=None) -> dict[str, tuple[list, list]]:
    """{family: (pixel batches, crop batches)} of the corrupted copies (see :func:`collect`);
    ``subset`` (indices) restricts the frames."""
    out = {}
    for family in FAMILIES:
        frames = FamilyCorruptions(raw, family, cfg.seed, transform)
        if subset is not None:
            frames = Subset(frames, list(subset))
        out[family] = collect(model, frames, cfg, SHIFT_COPY_PIXELS)
    return out


def fit_augmented(kind, clean: tuple[list, list], families: dict, weights, cfg, exclude=()):
    """Fit ``kind`` on the clean batches plus those of every family not in ``exclude``."""
    pixels, crops = list(clean[0]), list(clean[1])
    for family, (p, c) in families.items():
        if family not in (exclude or ()):
            pixels += p
            crops += c
    return _fit(kind, pixels, crops, weights, cfg)


def shift_batches(model, info: dict, args, cfg, n_frames: int) -> dict:
    """{family: batches} of the first ``n_frames`` calibration frames, corrupted per family
    (:class:`~seguncert.evaluate.shift_families.FamilyCorruptions`), for --calibration-shift."""
    from .data import split_dataset

    split = args.calibration_split or args.split
    out = {}
    for family in FAMILIES:
        wrap = lambda raw, f=family: FamilyCorruptions(raw, f, cfg.seed)  # noqa: E731
        ds = split_dataset(info, args.data_root, split, args.limit, wrap)
        out[family] = collect(model, Subset(ds, range(n_frames)), cfg, SHIFT_COPY_PIXELS)
    return out


def calibrate_and_store(model, info: dict, dataset, args, cfg):
    """Fit and select a calibrator on the calibration frames, store it in the sidecar; returns
    (calibrator, the dataset to evaluate: the evaluated split less its calibration frames,
    every fitted calibrator by kind, for comparisons)."""
    if not checkpoint_task(info).segmentation:
        raise ConfigError("calibration needs class logits: this is a depth checkpoint")
    kinds = parse_kinds(args.calibrate)
    if args.calibration_split and args.calibration_split != args.split:
        from .data import split_dataset

        cal_ds, eval_ds = split_dataset(info, args.data_root, args.calibration_split), dataset
    else:
        cal_ds, eval_ds = split_in_order(dataset, args.calibration_fraction)
    pixels, crops = collect(model, cal_ds, cfg)
    weights = (info.get("meta") or {}).get("class_weights")
    calibrator, table, fitted = select(kinds, pixels, crops, weights, cfg)
    if getattr(args, "calibration_shift", False):
        families = shift_batches(model, info, args, cfg, len(cal_ds))
        calibrator = fit_augmented(calibrator.kind, (pixels, crops), families, weights, cfg)
        fitted[f"{calibrator.kind}+shift"] = calibrator
    report = {
        "split": args.calibration_split or args.split,
        "frames": len(cal_ds),
        "mc_samples": cfg.mc_samples,
        "noise_samples": cfg.noise_samples,
        "selection": table,
        "chosen": calibrator.kind,
        "shift_augmented": bool(getattr(args, "calibration_shift", False)),
    }
    update_sidecar(info["sidecar_path"], calibration=calibrator.to_dict(), calibration_fit=report)
    for row in table:
        print(
            f"calibrator {row['kind']:<18} held-out NLL {row['heldout_nll']:.4f}  {row['fitted']}"
        )
    print(f"chose {calibrator.describe()}; stored in {info['sidecar_path']}")
    return calibrator, eval_ds, fitted
