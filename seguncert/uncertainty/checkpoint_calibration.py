"""The calibrator a checkpoint carries: the one helper every tool applies calibration through.

The sidecar's ``calibration`` field holds a calibrator's ``to_dict()``
(:mod:`seguncert.uncertainty.calibrators`). Checkpoints from before calibrators stored a
``temperature`` (a number or a per-class list): read as the equivalent temperature calibrator.
"""

from __future__ import annotations

from ..errors import CheckpointError
from ..tasks import checkpoint_task
from .calibrators import KINDS, Calibrator, calibrator_from_dict


def checkpoint_calibrator(info: dict) -> Calibrator | None:
    """The calibrator stored in sidecar ``info`` (None when there is none, or no class logits)."""
    task = checkpoint_task(info)
    if not task.segmentation:
        return None
    num_classes = len((info.get("meta") or {}).get("class_names") or [])
    stored = info.get("calibration")
    if stored:
        try:
            return calibrator_from_dict(stored, num_classes, "segmentation")
        except CheckpointError as e:
            raise CheckpointError(f"{info.get('sidecar_path', 'checkpoint')}: {e}") from None
    legacy = info.get("temperature")
    if legacy is None:
        return None
    if isinstance(legacy, list):
        if len(legacy) != num_classes:
            raise CheckpointError(
                f"temperature has {len(legacy)} values but the model has {num_classes} classes"
            )
        return KINDS["class_temperature"](num_classes, {"tau": legacy})
    return KINDS["temperature"](num_classes, {"tau": float(legacy)})
