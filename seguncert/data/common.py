"""Shared data constants and the dataset metadata that travels into checkpoints."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

IGNORE_INDEX = 255  # label value ignored by losses and metrics (CamVid void 11 maps here)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CAMVID_CLASSES = (
    "Sky",
    "Building",
    "Pole",
    "Road",
    "Pavement",
    "Tree",
    "SignSymbol",
    "Fence",
    "Car",
    "Pedestrian",
    "Bicyclist",
)
CAMVID_VOID = 11  # on-disk label value of "Unlabelled"
# RGB colour of each class (index = label value); row 11 is void.
CAMVID_PALETTE = (
    (128, 128, 128),
    (128, 0, 0),
    (192, 192, 128),
    (128, 64, 128),
    (60, 40, 222),
    (128, 128, 0),
    (192, 128, 128),
    (64, 64, 128),
    (64, 0, 128),
    (64, 64, 0),
    (0, 128, 192),
    (0, 0, 0),
)
# Median-frequency weights published with SegNet (SegNet-Tutorial, CamVid train split).
SEGNET_CLASS_WEIGHTS = (
    0.2595,
    0.1826,
    4.5640,
    0.1417,
    0.9051,
    0.3826,
    9.6446,
    1.8418,
    0.6823,
    6.2478,
    7.3614,
)


@dataclass
class DatasetMeta:
    """What a model needs to know about its data; saved in the checkpoint sidecar."""

    task: str = "segmentation"  # segmentation | depth | joint
    class_names: list[str] = field(default_factory=lambda: list(CAMVID_CLASSES))
    palette: list[list[int]] = field(default_factory=lambda: [list(c) for c in CAMVID_PALETTE])
    class_weights: list[float] | None = None
    ignore_index: int = IGNORE_INDEX
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    min_depth: float = 0.1
    max_depth: float = 10.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DatasetMeta:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)
