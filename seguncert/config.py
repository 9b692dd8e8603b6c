"""Typed configuration: one dataclass per concern, loaded from YAML plus ``section.key=value``.

A YAML file has up to six sections (``data``, ``model``, ``loss``, ``optim``, ``train``, ``mc``);
each maps onto the dataclass of the same name below. An unknown section or key is a
:class:`ConfigError` that names it and its closest valid keys, so a typo never silently
falls back to a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import ConfigError, one_line


@dataclass
class DataConfig:
    dataset: str = "synthetic"  # synthetic | camvid | depth
    root: str | None = None  # data root (CamVid folder, depth folder); None for synthetic
    train_split: str = "train"
    val_split: str = "val"
    size: list[int] | None = None  # [H, W] resize on load; None keeps the native size
    crop: list[int] | None = None  # [H, W] random crop for training; None: no crop
    scale_range: list[float] = field(default_factory=lambda: [0.75, 1.5])
    hflip: bool = True
    color_jitter: float = 0.2
    cache: bool = True  # keep decoded frames in memory so an epoch does not re-decode PNGs
    num_workers: int = 0
    # depth only
    depth_encoding: str = "nyu8"  # nyu8 | mm16 | kitti16 | npy
    min_depth: float = 0.1
    max_depth: float = 10.0
    exclude_scenes: list[str] | None = None  # scene-name prefixes kept out of training
    scenes: list[str] | None = None  # evaluate / validate on these scenes only
    # synthetic only
    synthetic_train: int = 400
    synthetic_val: int = 64
    synthetic_size: list[int] = field(default_factory=lambda: [120, 160])
    synthetic_seed: int = 0
    limit_train: int | None = None  # use only the first N training samples (quick runs)
    train_fraction: float = 1.0  # a random share of the training frames (seeded by train.seed)
    train_list: str | None = None  # a text file naming the training frames to use, one per line
    limit_val: int | None = None


@dataclass
class ModelConfig:
    arch: str = "unet"  # unet | segnet_basic | segnet
    task: str = "segmentation"  # segmentation | depth | joint
    encoder: str = "resnet18"  # any segmentation-models-pytorch encoder (unet only)
    encoder_weights: str | None = None  # e.g. "imagenet" when online
    num_classes: int = 11
    dropout: str = "decoder"  # central | encoder | decoder | classifier | all | none
    dropout_p: float = 0.5
    heteroscedastic: bool = True  # learn per-pixel aleatoric variance
    decoder_channels: list[int] = field(default_factory=lambda: [256, 128, 64, 32, 16])
    width: int = 64  # SegNet-Basic channel width
    concrete_dropout: bool = False  # learn each dropout layer's rate (starting at dropout_p)


@dataclass
class LossConfig:
    aleatoric_samples: int = 10  # T_a Gaussian logit samples for heteroscedastic CE
    class_weights: str = "median_frequency"  # median_frequency | sqrt_median_frequency | none
    depth: str = "laplace"  # laplace | gaussian | l1
    multitask: str = "learned"  # learned | fixed  (joint model task weighting)
    # Concrete dropout's regulariser scale 1/N: N = training images x this (see docs/method.md)
    concrete_n_per_image: float = 1000.0


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    schedule: str = "poly"  # poly | cosine | constant
    poly_power: float = 0.9
    warmup_iters: int = 0
    grad_clip: float | None = 5.0
    concrete_lr_scale: float = 10.0  # learning-rate multiple for Concrete dropout's rates


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 8
    # auto | off | fp16 | bf16 | bf16_native  (auto: fp16 on CUDA, off on CPU; bf16_native:
    # bf16 on GPUs and CPUs that compute it natively, i.e. AVX512-BF16 or AMX, else off)
    amp: str = "auto"
    channels_last: bool = False
    seed: int = 0
    val_every: int = 1
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    max_minutes: float | None = None  # wall-clock budget; stops after the epoch that exceeds it
    log_every: int = 10  # TensorBoard scalars every N iterations
    log_seconds: float = 30.0  # progress line interval when the output is not a terminal
    deterministic: bool = False
    threads: int | None = None  # torch CPU threads; None: torch's default


@dataclass
class MCConfig:
    samples: int = 20
    memory_budget_mb: float = 1024.0  # bound on the replicated suffix batch
    seed: int = 0
    temporal: int = 0  # fresh samples per frame when reusing samples over time (0 = off)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mc: MCConfig = field(default_factory=MCConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Values with a fixed set of choices; checked after loading so a typo in a value is caught too.
CHOICES: dict[str, tuple[str, ...]] = {
    "data.dataset": ("synthetic", "camvid", "depth"),
    "data.depth_encoding": ("nyu8", "mm16", "kitti16", "npy"),
    "model.arch": ("unet", "segnet_basic", "segnet"),
    "model.task": ("segmentation", "depth", "joint"),
    "model.dropout": ("central", "encoder", "decoder", "classifier", "all", "none"),
    "loss.class_weights": ("median_frequency", "sqrt_median_frequency", "none"),
    "loss.depth": ("laplace", "gaussian", "l1"),
    "loss.multitask": ("learned", "fixed"),
    "optim.name": ("adamw", "sgd"),
    "optim.schedule": ("poly", "cosine", "constant"),
    "train.amp": ("auto", "off", "fp16", "bf16", "bf16_native"),
}


# Numeric bounds, checked after loading: (minimum, whether the minimum itself is allowed).
BOUNDS: dict[str, tuple[float, bool]] = {
    "data.num_workers": (0, True),
    "data.train_fraction": (0, False),
    "model.num_classes": (1, True),
    "loss.aleatoric_samples": (1, True),
    "loss.concrete_n_per_image": (0, False),
    "optim.lr": (0, False),
    "optim.weight_decay": (0, True),
    "optim.warmup_iters": (0, True),
    "optim.concrete_lr_scale": (0, False),
    "train.epochs": (1, True),
    "train.batch_size": (1, True),
    "train.val_every": (1, True),
    "train.log_every": (1, True),
    "train.log_seconds": (0, True),
    "train.max_minutes": (0, False),
    "train.threads": (1, True),
    "mc.samples": (1, True),
    "mc.memory_budget_mb": (0, False),
    "mc.temporal": (0, True),
}


def _closest(name: str, options: list[str]) -> str:
    near = difflib.get_close_matches(name, options, n=3, cutoff=0.5)
    return f" (did you mean {', '.join(repr(n) for n in near)}?)" if near else ""


def _coerce(value, tp, where: str):
    """Check/convert ``value`` to the annotated type ``tp``; raise ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{where}' must be a list, got {value!r}")
        return [_coerce(v, args[0], where) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{where}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"config key '{where}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{where}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{where}' must be a string, got {value!r}")
        return value
    return value


def _apply(cfg: Config, section: str, key: str, value) -> None:
    sections = {f.name: f for f in dataclasses.fields(Config)}
    if section not in sections:
        raise ConfigError(f"unknown config section '{section}'{_closest(section, list(sections))}")
    sub = getattr(cfg, section)
    hints = typing.get_type_hints(type(sub))
    if key not in hints:
        raise ConfigError(f"unknown config key '{section}.{key}'{_closest(key, list(hints))}")
    setattr(sub, key, _coerce(value, hints[key], f"{section}.{key}"))


def _validate(cfg: Config) -> None:
    for dotted, options in CHOICES.items():
        section, key = dotted.split(".")
        value = getattr(getattr(cfg, section), key)
        if value not in options:
            raise ConfigError(
                f"config key '{dotted}' is {value!r}; expected one of {', '.join(options)}"
            )
    for dotted, (low, inclusive) in BOUNDS.items():
        section, key = dotted.split(".")
        value = getattr(getattr(cfg, section), key)
        if value is not None and (value < low or (value == low and not inclusive)):
            bound = f">= {low}" if inclusive else f"> {low}"
            raise ConfigError(f"config key '{dotted}' must be {bound}, got {value!r}")


def config_from_dict(raw: dict | None, overrides: list[str] | None = None) -> Config:
    cfg = Config()
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError("config must be a mapping of sections (data, model, loss, ...)")
    for section, body in raw.items():
        if body is None:
            continue
        if not isinstance(body, dict):
            if section not in {f.name for f in dataclasses.fields(Config)}:
                _apply(cfg, section, "", None)  # raises 'unknown section'
            raise ConfigError(f"config section '{section}' must be a mapping")
        for key, value in body.items():
            _apply(cfg, section, str(key), value)
    for item in overrides or []:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"override '{item}' must look like section.key=value")
        dotted, text = item.split("=", 1)
        section, key = dotted.split(".", 1)
        try:
            value = yaml.safe_load(text) if text != "" else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override '{item}': value is not valid YAML ({e})") from None
        _apply(cfg, section, key, value)
    _validate(cfg)
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config file (or only defaults when ``path`` is None) and apply overrides."""
    raw = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {one_line(e)}") from None
    return config_from_dict(raw, overrides)


def config_yaml(cfg: Config) -> str:
    """The resolved config as YAML text (what a run folder's config.yaml holds)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
