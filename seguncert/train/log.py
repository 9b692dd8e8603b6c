"""Per-run logs on rank 0: ``log.csv`` (one row per epoch) and TensorBoard events (``tb/``).

The CSV's columns grow as new fields appear (validation metrics only exist on validation
epochs), so each append rewrites the whole file atomically: the log is small (one row per
epoch) and a crash never leaves half a row. A resumed run keeps the rows of the epochs it
continues from and drops any logged after them.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ..io.atomic import atomic_write_text


class CsvLog:
    def __init__(self, path: str | Path, keep_until_epoch: int | None = None):
        self.path = Path(path)
        self.rows: list[dict] = []
        self.columns: list[str] = []
        if keep_until_epoch is not None and self.path.is_file():
            with open(self.path, newline="") as f:
                for row in csv.DictReader(f):
                    if int(row.get("epoch") or -1) <= keep_until_epoch:
                        self.append(row, write=False)

    def append(self, row: dict, write: bool = True) -> None:
        for k in row:
            if k not in self.columns:
                self.columns.append(k)
        self.rows.append(row)
        if write:
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=self.columns, restval="")
            w.writeheader()
            w.writerows(self.rows)
            atomic_write_text(self.path, buf.getvalue())


def scalar_items(prefix: str, values: dict) -> dict[str, float]:
    """Flatten metrics for logging: numbers kept, lists expanded (``val/per_class_iou/3``)."""
    out: dict[str, float] = {}
    for k, v in values.items():
        if isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            out[f"{prefix}{k}"] = float(v)
        elif isinstance(v, (list, tuple)) and all(isinstance(x, (int, float)) for x in v):
            for i, x in enumerate(v):
                out[f"{prefix}{k}/{i}"] = float(x)
    return out


def format_metrics(metrics: dict, keys=("miou", "pixel_accuracy", "abs_rel", "rmse", "delta1")):
    shown = [f"{k} {metrics[k]:.4f}" for k in keys if isinstance(metrics.get(k), (int, float))]
    return ", ".join(shown) if shown else "no metrics"


def open_writer(log_dir: Path):
    """TensorBoard SummaryWriter (imported lazily: it pulls in tensorboard, slow to import)."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(log_dir))


def log_epoch(log: CsvLog, writer, epoch: int, step: int, train: dict, val: dict) -> None:
    """One log.csv row and the epoch's TensorBoard scalars."""
    row = {"epoch": epoch, "iter": step}
    row.update(scalar_items("train_", {k: v for k, v in train.items() if k != "stopped_early"}))
    row.update(scalar_items("val_", {k: v for k, v in val.items() if not isinstance(v, list)}))
    log.append(row)
    if writer is not None:
        for k, v in scalar_items("val/", val).items():
            writer.add_scalar(k, v, step)
        for k in ("loss", "images_per_s"):
            if k in train:
                writer.add_scalar(f"epoch/{k}", train[k], step)
        writer.flush()
