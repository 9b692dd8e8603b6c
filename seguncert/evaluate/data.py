"""The split an evaluation scores, built from the checkpoint's own data config.

Only that split is read (no training frames, no class weights: what evaluation needs from
training is in the checkpoint). A data root that does not hold the data the checkpoint was
trained on is named as a checkpoint / data mismatch.
"""

from __future__ import annotations

from pathlib import Path

from ..config import config_from_dict
from ..errors import DataError, one_line
from ..tasks import checkpoint_task


def eval_config(info: dict, data_root: str | None, scenes: list[str] | None = None):
    """The checkpoint's resolved config with ``data.root`` replaced by ``data_root``; depth data
    restricted to ``scenes`` (whatever split they are in) when given."""
    cfg = config_from_dict(info.get("config") or {})
    cfg.data.exclude_scenes = None  # a training-time filter
    if scenes:
        cfg.data.scenes, cfg.data.train_split = list(scenes), "\0"  # no split is "training"
    if data_root is not None:
        if not Path(data_root).is_dir():
            raise DataError(f"data root not found: {data_root}")
        cfg.data.root = str(data_root)
    elif cfg.data.dataset != "synthetic" and not (cfg.data.root and Path(cfg.data.root).is_dir()):
        raise DataError(
            f"--data-root is required: the checkpoint's data root {cfg.data.root!r} "
            "is not a folder here"
        )
    return cfg


def split_dataset(
    info: dict,
    data_root: str | None,
    split: str,
    limit: int | None = None,
    wrap=None,
    scenes: list[str] | None = None,
):
    """The evaluation dataset of ``split`` (eval transform, padded to a multiple of 32);
    ``wrap`` as in :func:`seguncert.data.build.build_split`."""
    from ..data.build import build_split

    cfg = eval_config(info, data_root, scenes)
    meta = info.get("meta") or {}
    mean, std = meta.get("mean"), meta.get("std")
    try:
        return build_split(cfg, split, mean, std, limit, wrap)
    except DataError as e:
        task = checkpoint_task(info).name
        raise DataError(
            f"the checkpoint is a {task} model trained on data.dataset={cfg.data.dataset}, but "
            f"{cfg.data.root or 'the data'} does not hold that data for split {split!r}: "
            f"{one_line(e)}"
        ) from None
