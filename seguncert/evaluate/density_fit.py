"""Fit a checkpoint's feature density on its own training split and store it beside it.

The frames are the checkpoint's training split with the evaluation transform (no augmentation,
padding cropped away), run once in eval mode; see
:mod:`seguncert.uncertainty.feature_density` for the model. Only the sidecar's
``feature_density`` entry changes (calibration and every other field are kept).
"""

from __future__ import annotations

from ..runtime.progress import Progress
from ..uncertainty.feature_density import SIDECAR_KEY, fit_feature_density, store_density
from .data import eval_config, split_dataset

DEFAULT_STAGES = (-4,)  # the decoder's stride-4 map (measured best; feature_density docstring)


def evenly_spaced(n: int, k: int | None) -> list[int]:
    """k indices spread over range(n) (all of them when k is None or >= n)."""
    if k is None or k >= n:
        return list(range(n))
    return sorted({round(i * (n - 1) / max(k - 1, 1)) for i in range(k)})


def fit_checkpoint_density(
    model,
    info: dict,
    data_root: str | None = None,
    frames: int | None = None,
    stages=DEFAULT_STAGES,
    per_image: int = 2000,
    batch_size: int = 2,
    progress: bool = True,
    seed: int = 0,
) -> dict:
    """Fit on ``frames`` evenly spaced frames of the training split (all when None), store the
    density next to ``info['sidecar_path']`` and put its entry into ``info``; returns the entry."""
    from torch.utils.data import DataLoader, Subset

    split = eval_config(info, data_root).data.train_split
    ds = split_dataset(info, data_root, split)
    ds = Subset(ds, evenly_spaced(len(ds), frames))
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False)
    classes = len(info["meta"]["class_names"])
    with Progress(len(ds), "fit feature density", unit="img", enabled=progress) as bar:
        density = fit_feature_density(
            model,
            loader,
            classes,
            stages,
            per_image,
            seed,
            on_batch=lambda n: bar.update(n, images=n),
        )
    about = {"split": split, "frames": len(ds), "per_image": per_image, "seed": seed}
    entry = store_density(info["sidecar_path"], info, density, **about)
    info[SIDECAR_KEY] = entry
    return entry
