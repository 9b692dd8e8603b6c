"""Training throughput (images/s): seguncert's training step vs the plain smp loop.

  ours   seguncert's U-Net (heteroscedastic head, dropout preset --dropout) + Criterion
         (heteroscedastic cross-entropy with T_a = --aleatoric-samples noisy-logit draws, class
         weights) + AdamW with the decay groups, poly schedule and gradient clipping, stepped by
         seguncert.train.loop.train_one_epoch itself;
  smp    smp.Unet (same encoder) + F.cross_entropy(weight, ignore 255) + AdamW, the loop of
         bench/baseline_smp_train.py.
Same batch size and resolution, synthetic random batches already in device memory (no IO, no
augmentation), --steps optimiser steps per timed call, round-robin rounds after warm-up, median.
On CUDA also ours with AMP fp16 (GradScaler), bf16 and channels_last (and smp under fp16).

    python bench/train_throughput.py                  # CPU: 180x240, batch 8; CUDA: 360x480, 16
    python bench/train_throughput.py --quick --json
"""

from __future__ import annotations

import statistics

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from _common import (
    add_common_args,
    describe_machine,
    device_label,
    doc_parser,
    emit_summary,
    parse_hw,
    print_table,
    setup,
    time_round_robin,
    verdict,
)

from seguncert.config import ModelConfig, OptimConfig
from seguncert.data.common import IGNORE_INDEX, SEGNET_CLASS_WEIGHTS
from seguncert.errors import ConfigError, run_cli
from seguncert.losses.criterion import Criterion
from seguncert.models.build import build_model
from seguncert.runtime.amp import autocast, make_scaler
from seguncert.train.loop import StepContext, train_one_epoch
from seguncert.train.optim import build_optimizer, build_scheduler

NUM_CLASSES = 11


def synthetic_batches(n: int, batch: int, size, device, seed: int) -> list[dict]:
    """n batches of random normalised images and labels (about 5% void), on ``device``."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        label = torch.randint(0, NUM_CLASSES, (batch, *size), generator=g)
        label[torch.rand(batch, *size, generator=g) < 0.05] = IGNORE_INDEX
        image = torch.randn(batch, 3, *size, generator=g)
        out.append({"image": image.to(device), "label": label.to(device),
                    "valid": (label != IGNORE_INDEX).to(device)})  # fmt: skip
    return out


def ours_runner(args, batches, device, amp_dtype, channels_last: bool, het: bool = True):
    """A closure running one train_one_epoch over ``batches`` (= --steps optimiser steps);
    ``het=False``: plain head and weighted CE (isolates the heteroscedastic loss's cost)."""
    torch.manual_seed(args.seed)
    cfg = ModelConfig(encoder=args.encoder, dropout=args.dropout, heteroscedastic=het)
    model = build_model(cfg).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    weights = torch.tensor(SEGNET_CLASS_WEIGHTS, dtype=torch.float32)
    criterion = Criterion("segmentation", weights, args.aleatoric_samples).to(device)
    optim_cfg = OptimConfig()  # adamw, lr 1e-3, poly, grad_clip 5
    optimizer = build_optimizer(optim_cfg, [*model.parameters(), *criterion.parameters()])
    scheduler = build_scheduler(optim_cfg, optimizer, 1_000_000)
    scaler = make_scaler(device, amp_dtype)
    epoch = [0]

    step = StepContext(
        train_model=model,
        criterion=criterion,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        device=device,
        amp_dtype=amp_dtype,
        grad_clip=optim_cfg.grad_clip,
        channels_last=channels_last,
        progress=False,
    )

    def run():
        train_one_epoch(step, batches, epoch[0])
        epoch[0] += 1

    return run


def smp_runner(args, batches, device, amp_dtype=None):
    """The plain loop: smp.Unet + weighted cross-entropy + AdamW (fp16 with a GradScaler)."""
    torch.manual_seed(args.seed)
    model = smp.Unet(args.encoder, encoder_weights=None, classes=NUM_CLASSES).to(device).train()
    weights = torch.tensor(SEGNET_CLASS_WEIGHTS, dtype=torch.float32, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    scaler = make_scaler(device, amp_dtype)

    def run():
        for b in batches:
            with autocast(device, amp_dtype):
                logits = model(b["image"])
            loss = F.cross_entropy(logits.float(), b["label"], weight=weights,
                                   ignore_index=IGNORE_INDEX)  # fmt: skip
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            loss.item()  # the user's loop logs the loss (train_one_epoch does too)

    return run


def main() -> int:
    p = doc_parser(__doc__)
    p.add_argument("--encoder", default="resnet18", help="encoder of both U-Nets")
    p.add_argument("--dropout", default="decoder", help="our dropout preset (default decoder)")
    p.add_argument("--aleatoric-samples", type=int, default=10, help="T_a of the loss (10)")
    p.add_argument("--size", help="HxW (default 180x240 on CPU, 360x480 on CUDA; quick 96x128)")
    p.add_argument("--batch-size", type=int, help="default 8 on CPU, 16 on CUDA; quick 4")
    p.add_argument("--steps", type=int, help="optimiser steps per timed call (CPU 4, CUDA 20)")
    add_common_args(p, repeats=3)
    args = p.parse_args()
    device = setup(args)
    cuda = device.type == "cuda"
    size = parse_hw(args.size or ("96x128" if args.quick else "360x480" if cuda else "180x240"))
    bs = args.batch_size or (4 if args.quick else 16 if cuda else 8)
    steps = args.steps or ((10 if args.quick else 20) if cuda else 2 if args.quick else 4)
    if bs < 2 or steps < 1 or args.aleatoric_samples < 1:
        raise ConfigError("--batch-size must be >= 2 (BatchNorm), --steps and T_a >= 1")
    if cuda:
        torch.backends.cudnn.benchmark = True
    batches = synthetic_batches(steps, bs, size, device, args.seed)
    print(f"train_throughput on {device_label(device)}: {args.encoder} U-Net, {size[0]}x{size[1]}"
          f", batch {bs}, {steps} steps per call, {args.repeats} rounds after {args.warmup} "
          f"warm-up; ours = dropout {args.dropout}, heteroscedastic CE T_a="
          f"{args.aleatoric_samples}")  # fmt: skip
    runs = {
        "smp_fp32": smp_runner(args, batches, device),
        "ours_fp32": ours_runner(args, batches, device, None, False),
    }
    if not args.quick:  # diagnostic: our loop without the heteroscedastic head and loss
        runs["ours_fp32_plain_ce"] = ours_runner(args, batches, device, None, False, het=False)
    if cuda:
        bf16 = torch.cuda.is_bf16_supported()
        runs["smp_fp16"] = smp_runner(args, batches, device, torch.float16)
        runs["ours_fp16"] = ours_runner(args, batches, device, torch.float16, False)
        if bf16:
            runs["ours_bf16"] = ours_runner(args, batches, device, torch.bfloat16, False)
        runs["ours_fp32_channels_last"] = ours_runner(args, batches, device, None, True)
        runs["ours_fp16_channels_last"] = ours_runner(args, batches, device, torch.float16, True)
    times = time_round_robin(runs, device, args.repeats, args.warmup)
    images = steps * bs
    pick = min if args.stat == "min" else statistics.median
    ips = {k: images / pick(v) for k, v in times.items()}

    def paired(num: str, den: str) -> float:
        # ratio of images/s = ratio of times the other way; median: per round, then the median
        if args.stat == "min":
            return min(times[den]) / min(times[num])
        return statistics.median(t_d / t_n for t_n, t_d in zip(times[num], times[den]))

    ratio = paired("ours_fp32", "smp_fp32")
    rows = [[k, v, images / v * 1e3 / steps, v / ips["smp_fp32"]] for k, v in ips.items()]
    print_table(["config", "images/s", "ms/step", "x smp fp32"], rows)
    targets = {"ours_ge_0.95x_smp": ratio >= 0.95}
    print(f"\n  {verdict(ratio >= 0.95)}  ours {ratio:.3f}x the plain smp loop (target >= 0.95x)")
    summary = {
        "bench": "train_throughput",
        "device": device_label(device),
        "machine": describe_machine(device),
        "quick": args.quick,
        "size": list(size),
        "batch_size": bs,
        "steps": steps,
        "stat": args.stat,
        "images_per_s": ips,
        "ratio_ours_vs_smp": ratio,
    }
    if cuda:
        amp = {k: paired(k, "ours_fp32") for k in ips if k.startswith("ours_") and k != "ours_fp32"}
        summary["ratio_vs_ours_fp32"] = amp
        summary["ratio_smp_fp16_vs_smp_fp32"] = paired("smp_fp16", "smp_fp32")
        targets["amp_fp16_ge_2x_fp32"] = amp["ours_fp16"] >= 2.0
        print(f"  {verdict(amp['ours_fp16'] >= 2.0)}  AMP fp16 {amp['ours_fp16']:.2f}x fp32 "
              "(target >= 2x on a modern GPU)")  # fmt: skip
        for k, v in amp.items():
            print(f"        {k}: {v:.2f}x ours fp32")
    summary["targets"] = targets
    emit_summary(summary, args.json)
    return 0


if __name__ == "__main__":
    run_cli(main)
