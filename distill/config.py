"""Run configuration: data, teacher and student stages, distillation. Loaded from YAML (the presets: nfdseg/configs/)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from nfdseg.config import check_choices, deep_update, from_dict, run_config_layers, to_dict
from nfdseg.errors import ConfigError

from nfdseg.data.balance import CLASS_WEIGHTINGS
from nfdseg.data.config import DataConfig

# The fixed value sets of the run config, defined once: the loader checks them (Literal fields) and the CLI
# offers them as choices.
LOSSES = ("nfd", "kd", "cwd", "none")  # distill/losses/ has one module per name
# Logits KD on top (distill.logits_kd_weight > 0) applies to these losses only: kd already is logits KD, and
# 'none' is the undistilled baseline, which must stay undistilled whatever the distill section says.
LOGITS_KD_ON_TOP = ("nfd", "cwd")


def adds_logits_kd(cfg) -> bool:
    """Whether the student stage adds logits KD on top of cfg.loss (a DistillConfig)."""
    return cfg.logits_kd_weight > 0 and cfg.loss in LOGITS_KD_ON_TOP
OPTIMIZERS = ("sgd", "adamw")
AMP_MODES = ("auto", "bf16", "fp16", "off")
NORMS = ("squared", "euclidean")  # NFD's two readings of "L2 distance" (distill/losses/nfd.py)
REDUCTIONS = ("element", "spatial")  # NFD divides by C*H*W (width-independent) or the paper's literal H*W


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "deeplabv3_resnet10_w8"
    pretrained: str = ""  # "" | "torchvision" | path to a local .pth


@dataclass(frozen=True)
class OptimConfig:
    """name: sgd (with poly decay) | adamw. lr decays as (1 - it/iters) ** poly_power after warmup."""

    name: Literal[OPTIMIZERS] = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    warmup_iters: int = 0


@dataclass(frozen=True)
class TrainConfig:
    """amp: auto | bf16 | fp16 | off. auto: bf16 autocast where the device has bf16 units (Ampere+ GPUs; CPUs with
    AMX or AVX512-BF16, read from their flags), else fp16 on a GPU and fp32 on a CPU; fp16 on a CPU runs fp32.
    Weights, checkpoints and exports stay fp32 either way; metrics.amp in checkpoint.json says what ran.
    channels_last: NHWC activations (oneDNN's and cuDNN's faster layout for bf16 convolutions).
    The cross-entropy (distill/losses/ce.py): class_weights none | median_frequency (weights from the training
    masks, nfdseg/data/balance.py); OHEM when 0 < ohem_thresh < 1: only labelled pixels whose probability for
    their true class is <= ohem_thresh count, and at least ohem_min_kept of the hardest per batch."""

    iters: int = 600
    batch_size: int = 8
    grad_accum: int = 1
    eval_every: int = 200
    ckpt_every: int = 100
    log_every: int = 20
    amp: Literal[AMP_MODES] = "auto"
    channels_last: bool = False
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    class_weights: Literal[CLASS_WEIGHTINGS] = "none"
    ohem_thresh: float = 0.0
    ohem_min_kept: int = 0


@dataclass(frozen=True)
class StageConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass(frozen=True)
class DistillConfig:
    """loss: nfd | kd | cwd | none. weight: that loss's weight (null: the loss's default, see losses/).
    layers: nfd's feature pairs, `student:teacher` (e.g. high:layer4) or a plain name for the same name on both;
    empty: the default pairs of the two model families (models.DEFAULT_PAIRS).
    norm: nfd's L2 reading, squared | euclidean. reduction: element (divide by C*H*W, the same size at every
    width: the default) | spatial (the paper's literal divide by H*W, grows with the channel count).
    logits_kd_weight > 0 adds logits KD (temperature) on top of nfd or cwd.
    Runaway guard (distill/losses/guard.py): during the first guard_iters student iterations the run stops when
    the distillation loss exceeds max_ratio x the cross-entropy, divided by the loss's weight where that weight
    is above 1 (summed since the start); at every iteration when the logits are non-finite or any
    |logit| > max_abs_logit (0 turns either check off)."""

    loss: Literal[LOSSES] = "nfd"
    layers: tuple[str, ...] = ()
    weight: float | None = None
    norm: Literal[NORMS] = "squared"
    reduction: Literal[REDUCTIONS] = "element"
    temperature: float = 1.0
    cwd_tau: float = 4.0
    logits_kd_weight: float = 0.0
    max_ratio: float = 50.0
    guard_iters: int = 50
    max_abs_logit: float = 1.0e4


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    teacher: StageConfig = field(default_factory=lambda: StageConfig(model=ModelConfig("deeplabv3_resnet18_w32")))
    student: StageConfig = field(default_factory=StageConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    # The export stage's settings, as `nfdseg export` takes them (export/run.py ExportConfig: onnx, fp16, engine,
    # profile, parity, ...). Kept as a mapping here, below the export layer, and checked key by key when the
    # pipeline starts; no training stage reads it, so it is in no training run's identity.
    export: dict[str, Any] = field(default_factory=dict)
    base: str = "none"  # what this config was built on (set by load_run_config; informational, not an input)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


# Not part of any run's identity: how the training images are held changes nothing a stage produces.
NOT_IDENTITY = {("data", "cache_mb")}
# Fields added after runs were made, with the default that reproduces those runs: at that default they are left
# out of the identity, so a run made before they existed keeps its key and is not retrained.
LATER_FIELDS = {("train", "class_weights"): "none", ("train", "ohem_thresh"): 0.0, ("train", "ohem_min_kept"): 0}


def identity_dict(cfg: RunConfig) -> dict[str, Any]:
    """cfg.to_dict() less NOT_IDENTITY and the LATER_FIELDS at their default: what run keys hash."""
    d = cfg.to_dict()
    d.pop("export", None)  # the export stage keys its own settings (export/stage.py)
    for section, key in NOT_IDENTITY:
        d[section].pop(key, None)
    for stage in ("teacher", "student"):
        if not 0 < d[stage]["train"].get("ohem_thresh", 0.0) < 1:  # OHEM off: its min_kept changes nothing
            d[stage]["train"]["ohem_min_kept"] = LATER_FIELDS[("train", "ohem_min_kept")]
        for (section, key), default in LATER_FIELDS.items():
            if d[stage][section].get(key) == default:
                d[stage][section].pop(key)
    return d


def _written(data: dict[str, Any], *keys: str) -> bool:
    for k in keys:
        if not isinstance(data, dict) or k not in data:
            return False
        data = data[k]
    return True


def load_run_config(source: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Load a RunConfig from a YAML file (or a built-in name like 'quick'), apply overrides, validate.

    A file builds on a base named by its `base:` key (a preset name, a YAML path, or none); a user's file without
    it builds on `quick`, a built-in preset on the dataclass defaults. Everything a file does not write keeps its
    base's value; `overrides` (--set) apply last. The result records the file's own base in `RunConfig.base`.
    A teacher with the student's architecture is refused unless the user wrote teacher.model.arch.
    """
    layers = run_config_layers(source) if source else []
    overrides = dict(overrides or {})
    if "base" in overrides:
        raise ConfigError("'base' cannot be set with --set", seen=f"base={overrides['base']}",
                          fix="write `base: NAME` at the top of your config file")
    data: dict[str, Any] = {}
    users: dict[str, Any] = {}
    for layer in layers:
        data = deep_update(data, layer.data)
        if not layer.builtin:
            users = deep_update(users, layer.data)
    data = deep_update(data, overrides)
    users = deep_update(users, overrides)
    # the config's own base (a preset name or an absolute path): loading the saved config again resolves the same
    cfg = from_dict(RunConfig, {**data, "base": layers[-2].label if len(layers) > 1 else "none"})
    validate(cfg)
    arch = cfg.teacher.model.arch
    if arch == cfg.student.model.arch and not _written(users, "teacher", "model", "arch"):
        raise ConfigError(f"the teacher and the student are both {arch}: the teacher's architecture was not written, "
                          f"it came from the base ({cfg.base})",
                          fix="pick another student architecture, or write teacher.model.arch in your config "
                              f"(or --set teacher.model.arch={arch}) to distill from the same architecture on purpose")
    return cfg


def validate(cfg: RunConfig) -> None:
    """What the loader's types cannot say: known architectures, positive counts, a dataset root."""
    from nfdseg.models import ARCHS

    check_choices(cfg)  # Literal fields of a config built in code, not through the loader
    validate_distill(cfg.distill)
    for stage in ("teacher", "student"):
        sc: StageConfig = getattr(cfg, stage)
        if sc.model.arch not in ARCHS:
            raise ConfigError(f"{stage}.model.arch '{sc.model.arch}' is unknown", fix=f"choose one of {', '.join(ARCHS)}")
        for key in ("iters", "batch_size", "grad_accum", "eval_every", "ckpt_every"):
            if getattr(sc.train, key) < 1:
                raise ConfigError(f"{stage}.train.{key} must be at least 1", seen=str(getattr(sc.train, key)))
        if not 0.0 <= sc.train.ohem_thresh < 1.0 or sc.train.ohem_min_kept < 0:
            raise ConfigError(f"{stage}.train.ohem_thresh must be in [0, 1) (0: OHEM off) and ohem_min_kept >= 0",
                              seen=f"ohem_thresh {sc.train.ohem_thresh}, ohem_min_kept {sc.train.ohem_min_kept}",
                              fix="e.g. ohem_thresh: 0.7, ohem_min_kept: 10000 (pixels per batch)")
    if cfg.data.format != "synthetic" and not cfg.data.root:
        raise ConfigError(f"data.root is required for data.format={cfg.data.format}", fix="set data.root=/path/to/dataset")


def validate_distill(d: DistillConfig) -> None:
    for entry in d.layers:
        parts = str(entry).split(":")
        if len(parts) > 2 or not all(p.strip() for p in parts):
            raise ConfigError(f"distill.layers entry '{entry}' is not a feature name or a student:teacher pair",
                              fix="write e.g. layer4 (same name on both models) or high:layer4 (student high, "
                                  "teacher layer4)")
    if d.weight is not None and d.weight < 0:
        raise ConfigError("distill.weight must be >= 0", seen=str(d.weight))
    for key in ("max_ratio", "max_abs_logit"):
        if getattr(d, key) < 0:
            raise ConfigError(f"distill.{key} must be >= 0 (0 turns the check off)", seen=str(getattr(d, key)))
    if d.guard_iters < 0:
        raise ConfigError("distill.guard_iters must be >= 0", seen=str(d.guard_iters))
