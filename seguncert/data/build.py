"""Datasets from a Config: ``build_datasets(cfg) -> (train_ds, val_ds, DatasetMeta)``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch.utils.data import Subset

from ..errors import ConfigError, DataError
from ..tasks import get_task
from .camvid import CamVidDataset, median_frequency_weights
from .common import CAMVID_CLASSES, IMAGENET_MEAN, IMAGENET_STD, DatasetMeta
from .depth import DepthDataset
from .transforms import build_eval_transform, build_train_transform

# Which model tasks each dataset has targets for.
DATASET_TASKS = {
    "camvid": ("segmentation",),
    "depth": ("depth",),
    "synthetic": ("segmentation", "depth", "joint"),
}
SYNTHETIC_WEIGHT_FRAMES = 128  # rendered frames used to estimate synthetic class weights


def _data_root(cfg) -> Path:
    if cfg.data.root is None:
        raise DataError(
            f"data root not set for data.dataset={cfg.data.dataset} (set data.root or --data-root)"
        )
    root = Path(cfg.data.root).expanduser()
    if not root.is_dir():
        raise DataError(f"data root not found: {root} (set data.root or --data-root)")
    return root


def _size(value) -> tuple[int, int] | None:
    return tuple(int(v) for v in value) if value is not None else None


def _camvid(cfg, split: str) -> CamVidDataset:
    if cfg.model.num_classes != len(CAMVID_CLASSES):
        raise ConfigError(
            f"model.num_classes is {cfg.model.num_classes} but CamVid has {len(CAMVID_CLASSES)}"
        )
    d = cfg.data
    return CamVidDataset(_data_root(cfg), split, size=_size(d.size), cache=d.cache)


def _depth(cfg, split: str) -> DepthDataset:
    d = cfg.data
    return DepthDataset(
        _data_root(cfg),
        split,
        encoding=d.depth_encoding,
        min_depth=d.min_depth,
        max_depth=d.max_depth,
        size=_size(d.size),
        cache=d.cache,
        seed=cfg.train.seed,
        scenes=d.scenes if split != d.train_split else None,
        exclude_scenes=d.exclude_scenes if split == d.train_split else None,
    )


def _synthetic(cfg, split: str):
    from .synthetic import SyntheticStreetScenes  # written separately; import only when used

    d = cfg.data
    train = split == d.train_split
    # A different seed for val, so validation frames are never copies of training frames.
    return SyntheticStreetScenes(
        d.synthetic_train if train else d.synthetic_val,
        size=tuple(d.synthetic_size),
        seed=d.synthetic_seed if train else d.synthetic_seed + 10_000,
        cache=d.cache,
    )


BUILDERS = {"camvid": _camvid, "depth": _depth, "synthetic": _synthetic}


def _fraction(ds, d, seed: int):
    """A random ``data.train_fraction`` of the frames, the same for a seed (data-size studies)."""
    if d.train_fraction > 1.0:
        raise ConfigError(f"config key 'data.train_fraction' must be <= 1, got {d.train_fraction}")
    if d.train_fraction == 1.0:
        return ds
    n = max(2, round(len(ds) * d.train_fraction))
    keep = np.random.default_rng([seed, 7]).choice(len(ds), size=min(n, len(ds)), replace=False)
    return Subset(ds, sorted(int(i) for i in keep))


def _listed(ds, path: str | None):
    """The frames named in the text file ``path`` (one name or file name per line, ``#``
    comments): training on exactly the frames a labelling round produced."""
    if path is None:
        return ds
    names = getattr(ds, "frame_names", None)
    if names is None:
        raise ConfigError("data.train_list needs a dataset of named files (camvid or depth)")
    try:
        lines = Path(path).expanduser().read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"data.train_list {path}: cannot read it ({e})") from None
    wanted = [x.strip() for x in lines if x.strip() and not x.strip().startswith("#")]
    if not wanted:
        raise ConfigError(f"data.train_list {path} names no frames")
    index = {n: i for i, n in enumerate(names())}
    found = [index.get(w, index.get(Path(w).stem)) for w in wanted]
    missing = [w for w, i in zip(wanted, found) if i is None]
    if missing:
        raise DataError(
            f"data.train_list {path}: {len(missing)} of {len(wanted)} frames are not in the "
            f"training split (first: {missing[0]!r})"
        )
    return Subset(ds, sorted(set(found)))


def _limit(ds, n: int | None, key: str):
    if n is None:
        return ds
    if n < 1:
        raise ConfigError(f"config key '{key}' must be at least 1, got {n}")
    return Subset(ds, range(min(n, len(ds))))


def _check_task(cfg) -> None:
    d, task = cfg.data, cfg.model.task
    if d.dataset not in BUILDERS:
        raise ConfigError(f"unknown data.dataset {d.dataset!r}; expected one of {list(BUILDERS)}")
    if task not in DATASET_TASKS[d.dataset]:
        raise ConfigError(
            f"model.task={task} needs targets that data.dataset={d.dataset} does not have "
            f"(it serves {', '.join(DATASET_TASKS[d.dataset])})"
        )


def dataset_meta(cfg) -> DatasetMeta:
    """Normalisation and depth range of ``cfg``'s data (class weights are filled by training)."""
    min_depth, max_depth = float(cfg.data.min_depth), float(cfg.data.max_depth)
    if cfg.data.dataset == "synthetic":
        # Rendered depth has a fixed range of its own (0.5 m to 80 m), whatever the config says.
        from .synthetic import MAX_DEPTH, MIN_DEPTH

        min_depth, max_depth = float(MIN_DEPTH), float(MAX_DEPTH)
    return DatasetMeta(
        task=cfg.model.task,
        mean=list(IMAGENET_MEAN),
        std=list(IMAGENET_STD),
        min_depth=min_depth,
        max_depth=max_depth,
    )


def build_split(cfg, split: str, mean, std, limit: int | None = None, wrap=None):
    """One split with the evaluation transform (no augmentation), for evaluation: nothing of
    the other splits is read. ``wrap(raw) -> dataset`` (optional) turns the raw split into
    another raw dataset first (pasted objects, corruptions); DataError when the split is empty."""
    _check_task(cfg)
    raw = BUILDERS[cfg.data.dataset](cfg, split)
    if len(raw) == 0:
        raise DataError(f"split {split!r} of {cfg.data.root or 'synthetic data'} is empty")
    ds = wrap(raw) if wrap is not None else raw
    ds.transform = build_eval_transform(mean, std, pad_to=32)
    return _limit(ds, limit, "--limit")


def build_datasets(cfg):
    """Train and val datasets with their transforms, and the DatasetMeta for the checkpoint.

    Class weights (median frequency, on the raw training labels actually used, i.e. after
    ``data.limit_train``) are filled when ``loss.class_weights`` asks and the task has labels.
    """
    d, task = cfg.data, cfg.model.task
    _check_task(cfg)
    builder = BUILDERS[d.dataset]
    train_raw = builder(cfg, d.train_split)
    val_raw = builder(cfg, d.val_split)
    if len(train_raw) == 0 or len(val_raw) == 0:
        raise DataError(f"empty dataset: {len(train_raw)} train / {len(val_raw)} val samples")
    if d.train_list is not None and (d.train_fraction != 1.0 or d.limit_train is not None):
        raise ConfigError("data.train_list names the training frames: leave data.train_fraction "
                          "and data.limit_train unset")  # fmt: skip
    train_ds = _fraction(_limit(train_raw, d.limit_train, "data.limit_train"), d, cfg.train.seed)
    train_ds = _listed(train_ds, d.train_list)
    val_ds = _limit(val_raw, d.limit_val, "data.limit_val")

    meta = dataset_meta(cfg)
    if cfg.loss.class_weights != "none" and get_task(task).segmentation:
        # Before the transform is attached, so the weights come from the raw labels.
        source = train_ds
        if d.dataset == "synthetic" and len(train_ds) > SYNTHETIC_WEIGHT_FRAMES:
            # Synthetic frames are independent draws rendered on demand (no files to read):
            # a fixed subset estimates the class frequencies without rendering an extra epoch.
            source = Subset(train_ds, range(SYNTHETIC_WEIGHT_FRAMES))
        weights = median_frequency_weights(source, num_classes=cfg.model.num_classes)
        if cfg.loss.class_weights == "sqrt_median_frequency":
            # Half the prior shift: rare classes still count more, but not 10-40x more, so
            # large classes are not painted over by the rare ones (precision vs recall).
            weights = np.sqrt(weights)
        meta.class_weights = [round(float(w), 6) for w in weights]

    train_raw.transform = build_train_transform(
        crop=_size(d.crop),
        scale_range=tuple(d.scale_range),
        hflip=d.hflip,
        color_jitter=d.color_jitter,
        mean=meta.mean,
        std=meta.std,
        seed=cfg.train.seed,
    )
    val_raw.transform = build_eval_transform(meta.mean, meta.std, pad_to=32)
    return train_ds, val_ds, meta
