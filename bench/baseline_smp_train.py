"""The fair yardstick: the plain training loop a user would write with smp alone.

U-Net (smp, same encoder), cross-entropy with median-frequency class weights (void ignored),
AdamW at a constant learning rate, random horizontal flips, frames resized once to the same
size our CPU recipe uses; trained for a wall-clock budget, then val mIoU over every val pixel.
Deliberately nothing from seguncert's recipe (no scale/crop/colour augmentation, no schedule, no
heteroscedastic loss) except the file reading and the mIoU computation, so that the comparison
in docs/benchmarks.md measures the recipe.

    python bench/baseline_smp_train.py --data-root ../shared/datasets/camvid --minutes 40
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from seguncert.data.camvid import CamVidDataset, median_frequency_weights  # noqa: E402
from seguncert.data.common import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from seguncert.metrics.segmentation import ConfusionMatrix  # noqa: E402


def to_tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode every frame once (what a user's simple in-memory loader does)."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    images, labels = [], []
    for i in range(len(ds)):
        s = ds[i]
        images.append(torch.from_numpy(np.ascontiguousarray(s["image"])).permute(2, 0, 1))
        labels.append(torch.from_numpy(s["label"]))
    x = (torch.stack(images).float() / 255.0 - mean) / std
    return x, torch.stack(labels).long()


@torch.no_grad()
def val_miou(model, x, y, batch_size: int) -> dict:
    model.eval()
    cm = ConfusionMatrix(11, ignore_index=IGNORE_INDEX)
    for i in range(0, len(x), batch_size):
        logits = model(x[i : i + batch_size])
        cm.update(logits.argmax(1), y[i : i + batch_size])
    model.train()
    return cm.compute()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default="../shared/datasets/camvid")
    p.add_argument("--size", default="180x240", help="HxW frames are resized to")
    p.add_argument("--encoder", default="resnet18")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--minutes", type=float, default=40.0, help="wall-clock training budget")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the JSON summary here too")
    p.add_argument("--json", action="store_true", help="print a one-line JSON summary last")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    h, w = (int(v) for v in args.size.lower().split("x"))

    train_ds = CamVidDataset(args.data_root, "train", size=(h, w), cache=False)
    val_ds = CamVidDataset(args.data_root, "val", size=(h, w), cache=False)
    weights = torch.tensor(median_frequency_weights(train_ds, 11), dtype=torch.float32)
    xt, yt = to_tensors(train_ds)
    xv, yv = to_tensors(val_ds)

    model = smp.Unet(args.encoder, encoder_weights=None, classes=11)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    budget = args.minutes * 60.0
    start = time.perf_counter()
    seen, epoch = 0, 0
    bar = tqdm(desc="smp baseline", unit="img")
    while time.perf_counter() - start < budget:
        perm = torch.randperm(len(xt))
        for i in range(0, len(perm), args.batch_size):
            idx = perm[i : i + args.batch_size]
            x, y = xt[idx], yt[idx]
            flip = torch.rand(len(idx)) < 0.5
            x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
            loss = F.cross_entropy(model(x), y, weight=weights, ignore_index=IGNORE_INDEX)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(idx)
            bar.update(len(idx))
            bar.set_postfix(loss=f"{loss.item():.3f}", epoch=epoch)
            if time.perf_counter() - start >= budget:
                break
        epoch += 1
    bar.close()
    train_s = time.perf_counter() - start
    m = val_miou(model, xv, yv, args.batch_size)
    summary = {
        "bench": "baseline_smp_train",
        "encoder": args.encoder,
        "size": [h, w],
        "minutes": args.minutes,
        "train_seconds": round(train_s, 1),
        "epochs": epoch,
        "images_seen": seen,
        "images_per_s": round(seen / train_s, 2),
        "val_miou": round(float(m["miou"]), 4),
        "val_pixel_accuracy": round(float(m["pixel_accuracy"]), 4),
    }
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
