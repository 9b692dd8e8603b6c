"""seguncert.engine: checkpoints, optimisers, distributed helpers and the training loops."""

from seguncert.engine.checkpoint import (
    load_checkpoint,
    read_sidecar,
    save_checkpoint,
    update_sidecar,
)
from seguncert.engine.optim import build_optimizer, build_scheduler
from seguncert.engine.trainer import evaluate, fit, train_one_epoch

__all__ = [
    "build_optimizer",
    "build_scheduler",
    "evaluate",
    "fit",
    "load_checkpoint",
    "read_sidecar",
    "save_checkpoint",
    "train_one_epoch",
    "update_sidecar",
]
