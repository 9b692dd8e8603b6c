"""What each task is: its heads, outputs, losses, metrics and default views, declared once.

Code that depends on the task asks the :class:`Task` (``task.segmentation``, ``task.depth``,
``task.score(metrics)``...) instead of comparing task strings, so a task is added or changed here.

| task | heads | model outputs | loss parts | model selection |
|---|---|---|---|---|
| segmentation | classes | ``logits`` [+ ``logit_log_var``] | ``seg`` | highest mIoU |
| depth | depth | ``depth_loc`` [+ ``depth_log_scale``] | ``depth`` | lowest AbsRel |
| joint | both | both sets | ``seg`` + ``depth`` (learned weighting) | highest mIoU |

Sampler maps (see :mod:`seguncert.uncertainty.sampler`): depth maps are named ``depth``,
``aleatoric_var``, ... for a depth model and get a ``depth_`` prefix (``depth_aleatoric_var``)
in a joint model, whose unprefixed names are the segmentation maps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import CheckpointError, ConfigError

DEPTH_MAP_KEYS = ("depth", "aleatoric_var", "epistemic_var", "total_var")


@dataclass(frozen=True)
class Task:
    name: str
    segmentation: bool  # has class logits
    depth: bool  # has a depth head
    selection_metric: str  # validation metric that picks the `best` checkpoint
    higher_is_better: bool
    default_panels: tuple[str, ...]  # overlay panels of tools/infer.py

    @property
    def loss_parts(self) -> tuple[str, ...]:
        return (("seg",) if self.segmentation else ()) + (("depth",) if self.depth else ())

    @property
    def depth_prefix(self) -> str:
        """Prefix of the sampler's depth maps (``depth_`` when segmentation shares the names)."""
        return "depth_" if self.segmentation else ""

    def depth_maps(self, result: dict) -> dict:
        """The sampler's depth maps under their depth-only names."""
        p = self.depth_prefix
        return {k: result[k if k == "depth" else p + k] for k in DEPTH_MAP_KEYS}

    def score(self, metrics: dict) -> float:
        """Model-selection score, higher is better (-inf when the metric is missing or NaN)."""
        value = metrics.get(self.selection_metric)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return -math.inf
        return float(value) if self.higher_is_better else -float(value)


TASKS: dict[str, Task] = {
    "segmentation": Task(
        "segmentation", True, False, "miou", True, ("input", "seg", "aleatoric", "epistemic")
    ),
    "depth": Task(
        "depth", False, True, "abs_rel", False, ("input", "depth", "aleatoric", "epistemic")
    ),
    "joint": Task("joint", True, True, "miou", True, ("input", "seg", "depth", "epistemic")),
}


def get_task(name: str, where: str = "model.task") -> Task:
    """The :class:`Task` called ``name``; ConfigError naming ``where`` for an unknown one."""
    task = TASKS.get(name)
    if task is None:
        raise ConfigError(f"{where} is {name!r}; expected one of {', '.join(TASKS)}")
    return task


def checkpoint_task(info: dict) -> Task:
    """The task a checkpoint sidecar was trained for; CheckpointError when it names none."""
    name = info.get("kind") or (info.get("meta") or {}).get("task")
    name = name or (info.get("model_spec") or {}).get("task")
    if name not in TASKS:
        where = info.get("sidecar_path", "checkpoint")
        raise CheckpointError(f"{where}: task {name!r} is not one of {', '.join(TASKS)}")
    return TASKS[name]
