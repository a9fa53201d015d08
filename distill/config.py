"""Run configuration: data, teacher and student stages, distillation. Loaded from YAML (see configs/)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nfdseg.config import deep_update, from_dict, load_yaml, to_dict
from nfdseg.errors import ConfigError

from .data.config import DataConfig

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "deeplabv3_resnet10_w8"
    pretrained: str = ""  # "" | "torchvision" | path to a local .pth


@dataclass(frozen=True)
class OptimConfig:
    """name: sgd (with poly decay) | adamw. lr decays as (1 - it/iters) ** poly_power after warmup."""

    name: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    warmup_iters: int = 0


@dataclass(frozen=True)
class TrainConfig:
    """amp: auto (bf16 on GPUs that support it, off on CPU) | bf16 | fp16 | off."""

    iters: int = 600
    batch_size: int = 8
    grad_accum: int = 1
    eval_every: int = 200
    ckpt_every: int = 100
    log_every: int = 20
    amp: str = "auto"
    channels_last: bool = False
    seed: int = 0
    device: str = "auto"
    workers: int = 0


@dataclass(frozen=True)
class StageConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass(frozen=True)
class DistillConfig:
    """loss: nfd | kd | cwd | none. weight: that loss's weight (null: the loss's default, see losses/).
    layers: feature names distilled by nfd. norm: nfd's L2 reading, squared | euclidean.
    logits_kd_weight > 0 adds logits KD (temperature) on top of nfd or cwd."""

    loss: str = "nfd"
    layers: tuple[str, ...] = ("layer2", "layer3", "layer4", "head")
    weight: float | None = None
    norm: str = "squared"
    temperature: float = 1.0
    cwd_tau: float = 4.0
    logits_kd_weight: float = 0.0


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    teacher: StageConfig = field(default_factory=lambda: StageConfig(model=ModelConfig("deeplabv3_resnet18_w32")))
    student: StageConfig = field(default_factory=StageConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def builtin_config(name: str) -> Path:
    path = CONFIG_DIR / f"{name}.yaml"
    if not path.is_file():
        choices = ", ".join(p.stem for p in sorted(CONFIG_DIR.glob("*.yaml")))
        raise ConfigError(f"no built-in config named '{name}'", fix=f"use a YAML path or one of: {choices}")
    return path


def load_run_config(source: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Load a RunConfig from a YAML file (or a built-in name like 'quick'), apply overrides, validate."""
    data: dict[str, Any] = {}
    if source:
        path = Path(source)
        if not path.suffix and not path.exists():
            path = builtin_config(str(source))
        data = load_yaml(path)
    if overrides:
        data = deep_update(data, overrides)
    cfg = from_dict(RunConfig, data)
    validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    from .losses import LOSSES
    from .models import ARCHS

    if cfg.distill.loss not in LOSSES:
        raise ConfigError(f"distill.loss '{cfg.distill.loss}' is not a loss", fix=f"choose one of {', '.join(LOSSES)}")
    for stage in ("teacher", "student"):
        sc: StageConfig = getattr(cfg, stage)
        if sc.model.arch not in ARCHS:
            raise ConfigError(f"{stage}.model.arch '{sc.model.arch}' is unknown", fix=f"choose one of {', '.join(ARCHS)}")
        if sc.optim.name not in ("sgd", "adamw"):
            raise ConfigError(f"{stage}.optim.name must be sgd or adamw", seen=sc.optim.name)
        if sc.train.amp not in ("auto", "bf16", "fp16", "off"):
            raise ConfigError(f"{stage}.train.amp must be auto, bf16, fp16 or off", seen=sc.train.amp)
        for key in ("iters", "batch_size", "grad_accum", "eval_every", "ckpt_every"):
            if getattr(sc.train, key) < 1:
                raise ConfigError(f"{stage}.train.{key} must be at least 1", seen=str(getattr(sc.train, key)))
    if cfg.data.format not in ("synthetic", "folder", "cityscapes", "voc", "ade20k"):
        raise ConfigError(f"data.format '{cfg.data.format}' is unknown",
                          fix="choose synthetic, folder, cityscapes, voc or ade20k")
    if cfg.data.format != "synthetic" and not cfg.data.root:
        raise ConfigError(f"data.root is required for data.format={cfg.data.format}", fix="set data.root=/path/to/dataset")
