"""MC-dropout inference cost per dropout placement, as multiples of one deterministic pass.

For each placement preset (same architecture and weights, only the MCDropout places differ) and
each T, fused prediction + uncertainty maps of one frame (batch 1) by
  naive     a Python loop of T full forward passes with dropout on, then the maps from the
            stacked samples (the textbook recipe);
  batched   seguncert's MCSampler(use_split=False): the input replicated, full network per sample;
  ours      seguncert's MCSampler: deterministic prefix once, replicated stochastic suffix in
            memory-bounded chunks, maps accumulated on the fly;
  tu        TorchUncertainty's mc_dropout wrapper (on_batch=True), maps from its stacked outputs
            with the same functions as naive (left out when torch_uncertainty does not import).
Each time is divided by the time of one deterministic pass (model.eval(), no dropout, no maps)
timed round-robin in the same run. Beside each preset: AUROC of mutual information for
detecting misclassified CamVid val pixels (checkpoints from --checkpoint, or trained here for
--train-minutes per preset with seguncert's trainer at 180x240). A memory-budget check asserts
that a tiny suffix budget (one sample per chunk) gives the same maps as an unbounded one.

    python bench/mc_inference.py                      # full: 360x480, T = 1,5,10,20,50
    python bench/mc_inference.py --quick --json       # ~1 min on 2 CPU cores: 64x96, T = 1,20
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from _common import (
    add_common_args,
    camvid_root_or_none,
    camvid_val_batches,
    describe_machine,
    device_label,
    doc_parser,
    emit_summary,
    mi_auroc,
    parse_hw,
    parse_ints,
    print_table,
    setup,
    time_against,
    verdict,
)

from seguncert.config import Config, ModelConfig
from seguncert.errors import CheckpointError, ConfigError, run_cli
from seguncert.models.base import mc_dropout_mode
from seguncert.models.build import build_model, model_from_spec
from seguncert.uncertainty.checkpoint_calibration import checkpoint_calibrator
from seguncert.uncertainty.maps import (
    expected_entropy,
    predicted_class_variance,
    predictive_entropy,
)
from seguncert.uncertainty.sampler import MCSampler

PRESETS = ("classifier", "decoder", "central", "all")
TARGETS_T20 = {"classifier": 1.5, "decoder": 5.0}  # ours, x one deterministic pass, on CPU
NAIVE_SHARE_T20 = {"central": 0.8, "decoder": 0.8}  # ours <= share x naive (others: <= naive)


def stacked_maps(probs: torch.Tensor, log_vars: torch.Tensor | None) -> dict:
    """Textbook maps from all samples at once: probs (T, B, C, H, W), log_vars (T, B, 1, H, W)."""
    mean = probs.mean(0)
    pred = mean.argmax(1)
    total = predictive_entropy(mean)
    aleatoric = expected_entropy(probs)
    out = {
        "probs": mean,
        "pred": pred,
        "entropy": total,
        "aleatoric": aleatoric,
        "epistemic": (total - aleatoric).clamp_min(0.0),  # mutual information
        "prob_var": predicted_class_variance(probs, pred),
    }
    if log_vars is not None:
        out["logit_var"] = log_vars.exp().mean(0)[:, 0]
    return out


def naive_loop(model, x: torch.Tensor, samples: int) -> dict:
    probs, log_vars = [], []
    with torch.no_grad(), mc_dropout_mode(model):
        for _ in range(samples):
            out = model(x)
            probs.append(torch.softmax(out["logits"].float(), 1))
            if "logit_log_var" in out:
                log_vars.append(out["logit_log_var"].float())
    return stacked_maps(torch.stack(probs), torch.stack(log_vars) if log_vars else None)


def tu_runner(model, samples: int):
    """TorchUncertainty's recommended MC-dropout wrapper (batched on the batch dimension)."""
    from torch_uncertainty.methods.mc_dropout import mc_dropout

    wrapper = mc_dropout(model, samples, last_layer=False, on_batch=True, task="segmentation")

    def run(x: torch.Tensor) -> dict:
        wrapper.eval()  # eval everywhere except the dropout modules it found
        with torch.no_grad():
            out = wrapper(x)
        b = x.shape[0]
        logits = out["logits"].float()
        logits = logits.reshape(samples, b, *logits.shape[1:])
        lv = out.get("logit_log_var")
        lv = None if lv is None else lv.float().reshape(samples, b, *lv.shape[1:])
        return stacked_maps(torch.softmax(logits, 2), lv)

    return run


def deterministic(model, x: torch.Tensor) -> None:
    model.eval()  # also switches off dropout that the TU wrapper left in train mode
    with torch.no_grad():
        model(x)


def budget_check(model, x: torch.Tensor, samples: int, seed: int) -> dict:
    """A one-sample-per-chunk budget must give the same maps as an unbounded one. (The first
    call of a shape runs sample 1 alone to measure it, so the big budget's last chunk is T-1.)"""
    small = MCSampler(model, samples=samples, memory_budget_mb=1e-3, seed=seed)
    big = MCSampler(model, samples=samples, memory_budget_mb=1e9, seed=seed, cpu_chunk_mb=1e9)
    a, b = small(x), big(x)
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a if k != "pred")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-4, msg=lambda m, k=k: f"{k}: {m}")
    return {"chunk_small": small.last_chunk_size, "chunk_big": big.last_chunk_size,
            "max_abs_diff": diff, "ok": True}  # fmt: skip


def preset_checkpoint(args, preset: str, root: Path, device: torch.device):
    """(model, info, source): the preset's checkpoint from --checkpoint, or one trained here."""
    from seguncert.io.checkpoint import load_checkpoint

    if args.checkpoint:
        base = Path(args.checkpoint)
        for cand in (base / preset, base / f"{preset}.json"):
            if cand.exists():
                model, info = load_checkpoint(cand, map_location=device)
                return model, info, str(cand)
        try:  # one run folder for every preset: rebuild with this placement, same weights
            trained, info = load_checkpoint(base, map_location="cpu")
        except CheckpointError:
            raise CheckpointError(
                f"--checkpoint {base}: no {preset}/ run folder or {preset}.json inside, "
                "and it is not a checkpoint itself"
            ) from None
        model = model_from_spec(info["model_spec"], dropout=preset)
        model.load_state_dict(trained.state_dict())
        return model.to(device).eval(), info, f"{base} (placement set to {preset})"
    from seguncert.io.checkpoint import load_checkpoint as load
    from seguncert.train.fit import fit

    cfg = Config()
    cfg.data.dataset, cfg.data.root, cfg.data.size = "camvid", str(root), [180, 240]
    cfg.data.limit_val = 8  # one cheap validation at the end picks "best"
    cfg.model = ModelConfig(arch=args.arch, encoder=args.encoder, dropout=preset)
    cfg.optim.schedule = "constant"
    cfg.train.epochs, cfg.train.val_every = 10_000, 10_000  # the time budget stops it
    cfg.train.max_minutes, cfg.train.device = args.train_minutes, str(device)
    cfg.train.seed, cfg.train.threads = args.seed, args.threads
    keep = Path(args.save_checkpoints) / preset if args.save_checkpoints else None
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = keep or Path(tmp)
        fit(cfg, out_dir, overwrite=True)
        model, info = load(out_dir, map_location=device)
    return (
        model,
        info,
        f"trained {args.train_minutes} min at 180x240" + (f" -> {keep}" if keep else ""),
    )


def auroc_for(args, preset: str, root: Path, device: torch.device) -> dict:
    model, info, source = preset_checkpoint(args, preset, root, device)
    meta = info["meta"]
    size = parse_hw(args.auroc_size, "--auroc-size") if args.auroc_size else None
    if size is None and (info.get("config") or {}).get("data", {}).get("size"):
        size = tuple(info["config"]["data"]["size"])
    sampler = MCSampler(
        model,
        samples=args.auroc_samples,
        seed=args.seed,
        calibrator=checkpoint_calibrator(info),
        memory_budget_mb=args.memory_budget_mb,
    )
    frames = camvid_val_batches(root, args.auroc_frames, size, meta["mean"], meta["std"])
    res = mi_auroc(sampler, frames, device, len(meta["class_names"]))
    return {"auroc_mi": res["epistemic"], "error_rate": res["error_rate"],
            "frames": res["frames"], "size": list(size) if size else "native", "source": source}  # fmt: skip


def main() -> int:
    p = doc_parser(__doc__)
    p.add_argument("--arch", default="unet", help="unet | segnet_basic | segnet (default unet)")
    p.add_argument("--encoder", default="resnet18", help="U-Net encoder (default resnet18)")
    p.add_argument("--size", help="HxW of the timed frame (default 360x480; quick 64x96)")
    p.add_argument("--samples", help="comma-separated T values (default 1,5,10,20,50; quick 1,20)")
    p.add_argument("--presets", default=",".join(PRESETS), help="placements to compare")
    p.add_argument("--memory-budget-mb", type=float, default=1024.0, help="MCSampler budget")
    p.add_argument("--no-tu", action="store_true", help="leave out TorchUncertainty")
    g = p.add_argument_group("AUROC of mutual information on CamVid val")
    g.add_argument("--auroc", choices=("auto", "on", "off"), default="auto",
                   help="auto: on in full mode, in quick mode only with --checkpoint")  # fmt: skip
    g.add_argument("--checkpoint", help="folder with <preset>/ run folders (or <preset>.json), "
                   "or one run folder used with every placement")  # fmt: skip
    g.add_argument("--data-root", help="CamVid root (default ../shared/datasets/camvid)")
    g.add_argument("--train-minutes", type=float, default=None,
                   help="training budget per preset without --checkpoint (default 3 on CPU, "
                   "0.25 on CUDA)")  # fmt: skip
    g.add_argument("--save-checkpoints", help="keep the trained checkpoints here (<preset>/)")
    g.add_argument(
        "--auroc-frames", type=int, default=None, help="val frames (default 20; quick 4)"
    )
    g.add_argument("--auroc-samples", type=int, default=20, help="T for the AUROC (default 20)")
    g.add_argument("--auroc-size", help="HxW for the AUROC (default: the checkpoint's train size)")
    add_common_args(p, repeats=3)
    args = p.parse_args()
    device = setup(args)
    size = parse_hw(args.size or ("64x96" if args.quick else "360x480"))
    ts = parse_ints(args.samples or ("1,20" if args.quick else "1,5,10,20,50"), "--samples")
    presets = [s for s in args.presets.split(",") if s]
    bad = [s for s in presets if s not in ("classifier", "decoder", "central", "all", "encoder")]
    if bad or not presets:
        raise ConfigError(f"--presets: unknown placement(s) {bad}; choose from {PRESETS}")
    if args.train_minutes is None:
        args.train_minutes = 0.25 if device.type == "cuda" else 3.0
    args.auroc_frames = args.auroc_frames or (4 if args.quick else 20)
    tu_reason = "disabled by --no-tu" if args.no_tu else ""
    if not tu_reason:
        try:
            import torch_uncertainty.methods.mc_dropout  # noqa: F401
        except ImportError as e:
            tu_reason = f"torch_uncertainty does not import ({e})"

    print(f"mc_inference on {device_label(device)}: {args.arch}/{args.encoder} heteroscedastic, "
          f"{size[0]}x{size[1]}, batch 1, T={ts}, {args.repeats} rounds after {args.warmup} "
          f"warm-up ({args.stat}), suffix budget {args.memory_budget_mb:g} MB")  # fmt: skip
    torch.manual_seed(args.seed)
    base = build_model(ModelConfig(arch=args.arch, encoder=args.encoder, dropout="none"))
    state = base.state_dict()
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(args.seed)).to(device)
    methods = ["naive", "batched", "ours"] + ([] if tu_reason else ["tu"])
    ratios, det_ms, chunks, budget = {}, {}, {}, {}
    for preset in presets:
        model = model_from_spec(base.spec, dropout=preset)
        model.load_state_dict(state)
        model = model.to(device).eval()
        fns = {}
        for t in ts:
            ours = MCSampler(model, t, args.memory_budget_mb, seed=args.seed)
            full = MCSampler(model, t, args.memory_budget_mb, seed=args.seed, use_split=False)
            fns[f"naive/{t}"] = lambda m=model, t=t: naive_loop(m, x, t)
            fns[f"batched/{t}"] = lambda s=full: s(x)
            fns[f"ours/{t}"] = lambda s=ours: s(x)
            if not tu_reason:
                tu = tu_runner(model, t)
                fns[f"tu/{t}"] = lambda r=tu: r(x)
            chunks.setdefault(preset, {})[str(t)] = ours
        det_s, res = time_against(
            lambda m=model: deterministic(m, x), fns, device, args.repeats, args.warmup, args.stat
        )
        det_ms[preset] = det_s * 1e3
        ratios[preset] = {m: {str(t): res[f"{m}/{t}"]["ratio"] for t in ts} for m in methods}
        chunks[preset] = {t: s.last_chunk_size for t, s in chunks[preset].items()}
        budget[preset] = budget_check(model, x, 5 if args.quick else 20, args.seed)
        rows = [[m, *[ratios[preset][m][str(t)] for t in ts]] for m in methods]
        print_table(["method", *[f"T={t}" for t in ts]], rows,
                    f"{preset}: x one deterministic pass ({det_ms[preset]:.1f} ms); ours chunk "
                    f"k={chunks[preset]}; split at stage {model.split_index}/{len(model.stages)}")  # fmt: skip
        print(f"  memory-budget check (T={5 if args.quick else 20}): k={budget[preset]['chunk_small']} vs "
              f"k={budget[preset]['chunk_big']}, max |diff| {budget[preset]['max_abs_diff']:.2e}"
              " -> same maps")  # fmt: skip

    auroc, auroc_reason = {}, ""
    want = args.auroc == "on" or (args.auroc == "auto" and (not args.quick or args.checkpoint))
    root, reason = camvid_root_or_none(args.data_root)
    if not want:
        auroc_reason = "skipped: --auroc off" if args.auroc == "off" else (
            "skipped in --quick mode (pass --checkpoint or --auroc on)")  # fmt: skip
    elif root is None:
        auroc_reason = f"skipped: {reason}"
    else:
        details = {pr: auroc_for(args, pr, root, device) for pr in presets}
        auroc = {pr: d["auroc_mi"] for pr, d in details.items()}
        print_table(["preset", "AUROC(MI)", "error rate", "frames", "size", "weights"],
                    [[pr, d["auroc_mi"], d["error_rate"], d["frames"], d["size"], d["source"]]
                     for pr, d in details.items()],
                    f"AUROC of mutual information for misclassified pixels (T={args.auroc_samples})")  # fmt: skip
    if auroc_reason:
        print(f"\nAUROC {auroc_reason}")

    ratio_t20 = {pr: {m: r[m]["20"] for m in methods} for pr, r in ratios.items() if 20 in ts}
    targets = {}
    if ratio_t20:
        print("\ntargets at T=20 (ours, x one deterministic pass)")
        for pr, limit in TARGETS_T20.items():
            if pr in ratio_t20:
                ok = ratio_t20[pr]["ours"] <= limit
                targets[f"{pr}_le_{limit:g}x"] = ok
                print(f"  {verdict(ok)}  {pr}: {ratio_t20[pr]['ours']:.2f}x <= {limit:g}x")
        for pr, r in ratio_t20.items():
            for share in sorted({1.0, NAIVE_SHARE_T20.get(pr, 1.0)}, reverse=True):
                ok = r["ours"] <= share * r["naive"]
                name = "naive" if share == 1.0 else f"{share:g}_naive"
                targets[f"{pr}_ours_le_{name}"] = ok
                bound = f"{share:g} x naive {share * r['naive']:.2f}x" if share < 1 else "naive"
                print(
                    f"  {verdict(ok)}  {pr}: ours {r['ours']:.2f}x <= {bound} ({r['naive']:.2f}x)"
                )
    summary = {
        "bench": "mc_inference",
        "device": device_label(device),
        "machine": describe_machine(device),
        "quick": args.quick,
        "arch": f"{args.arch}/{args.encoder}",
        "size": list(size),
        "samples": ts,
        "stat": args.stat,
        "ratio_t20": ratio_t20,
        "ratios": ratios,
        "auroc_mi": auroc,
        "deterministic_ms": det_ms,
        "chunk_size": chunks,
        "memory_budget_check": budget,
        "targets": targets,
    }
    if tu_reason:
        summary["torch_uncertainty"] = tu_reason
    if auroc_reason:
        summary["auroc_note"] = auroc_reason
    emit_summary(summary, args.json)
    return 0


if __name__ == "__main__":
    run_cli(main)
