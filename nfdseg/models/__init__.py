"""Named segmentation models that return logits and, on request, the feature maps to distill.

`build_model(arch, num_classes)` builds one; `ARCHS` lists them. Forward returns logits at the
input resolution; `forward(x, return_features=True)` returns `(logits, {name: feature})`.
Nothing is downloaded unless `pretrained="torchvision"` is asked for explicitly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from nfdseg.errors import ConfigError
from .heads import DeepLabV3Head, upsample_to
from .mobilenet import build_mobilenetv3, mobilenetv3_forward
from .resnet import ResNetBackbone

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArchSpec:
    family: str  # "deeplabv3_resnet", "deeplabv3_mobilenetv3" or "lraspp_mobilenetv3" (head_backbone)
    block: str = "basic"
    depths: tuple[int, ...] = (2, 2, 2, 2)
    widths: tuple[int, ...] = (64, 128, 256, 512)
    head_width: int = 256
    rates: tuple[int, ...] = (12, 24, 36)
    output_stride: int = 8
    torchvision_backbone: str = ""
    description: str = ""


ARCHS: dict[str, ArchSpec] = {
    "deeplabv3_resnet101": ArchSpec("deeplabv3_resnet", "bottleneck", (3, 4, 23, 3), torchvision_backbone="resnet101",
                                    description="paper teacher, 58.6M params"),
    "deeplabv3_resnet50": ArchSpec("deeplabv3_resnet", "bottleneck", (3, 4, 6, 3), torchvision_backbone="resnet50",
                                   description="teacher, 39.6M params"),
    "deeplabv3_resnet18": ArchSpec("deeplabv3_resnet", "basic", (2, 2, 2, 2), torchvision_backbone="resnet18",
                                   description="paper student, 15.9M params"),
    "deeplabv3_mobilenetv3_large": ArchSpec("deeplabv3_mobilenetv3", torchvision_backbone="mobilenet_v3_large",
                                            description="paper's mobile student (DeepLabV3-MobileNetV3), 11.0M params"),
    "lraspp_mobilenetv3_large": ArchSpec("lraspp_mobilenetv3", torchvision_backbone="mobilenet_v3_large",
                                         description="mobile student, 3.2M params"),
    # Scaled-down variants for the built-in quick default on small inputs (96 px) and CPUs.
    "deeplabv3_resnet18_w32": ArchSpec("deeplabv3_resnet", "basic", (2, 2, 2, 2), (32, 64, 128, 256), 128, (2, 4, 6),
                                       description="quick-default teacher: ResNet-18 layout at half width"),
    "deeplabv3_resnet18_w32_os16": ArchSpec("deeplabv3_resnet", "basic", (2, 2, 2, 2), (32, 64, 128, 256), 128,
                                            (2, 4, 6), output_stride=16,
                                            description="the half-width ResNet-18 teacher at output stride 16: a third "
                                                        "of the FLOPs at the same parameters"),
    "deeplabv3_resnet10_w8": ArchSpec("deeplabv3_resnet", "basic", (1, 1, 1, 1), (8, 16, 32, 64), 32, (2, 4, 6),
                                      description="quick-default student: ResNet-10 layout at 1/8 width"),
    "deeplabv3_resnet_tiny": ArchSpec("deeplabv3_resnet", "basic", (1, 1, 1, 1), (4, 8, 8, 16), 8, (1, 2, 3),
                                      description="test model, a few thousand params"),
}


# Default NFD feature pairs (student name, teacher name) per (teacher backbone, student backbone), used when
# distill.layers is empty. Matched by stride: ResNet layer2/layer4 (stride 8 at output stride 8) and
# MobileNetV3 low (stride 8) / high (stride 16, resized to the teacher's map). Both with a DeepLabV3 head:
# the pre-classifier `head` map is added.
DEFAULT_PAIRS: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {
    ("resnet", "resnet"): (("layer2", "layer2"), ("layer3", "layer3"), ("layer4", "layer4")),
    ("resnet", "mobilenetv3"): (("low", "layer2"), ("high", "layer4")),
    ("mobilenetv3", "resnet"): (("layer2", "low"), ("layer4", "high")),
    ("mobilenetv3", "mobilenetv3"): (("low", "low"), ("high", "high")),
}


def default_pairs(teacher_family: str, student_family: str) -> tuple[tuple[str, str], ...]:
    """NFD's default (student feature, teacher feature) pairs for two model families (SegModel.family)."""
    head_t, _, bb_t = teacher_family.partition("_")
    head_s, _, bb_s = student_family.partition("_")
    if (bb_t, bb_s) not in DEFAULT_PAIRS:
        raise ConfigError(f"no default distillation layers for a {teacher_family} teacher and a {student_family} student",
                          fix="set distill.layers to student:teacher feature pairs, e.g. [high:layer4]")
    pairs = DEFAULT_PAIRS[(bb_t, bb_s)]
    if head_t == head_s == "deeplabv3":
        pairs = pairs + (("head", "head"),)
    return pairs


class SegModel(nn.Module):
    """Backbone + head. `feature_channels` maps each distillable feature name to its channel count."""

    def __init__(self, arch: str, num_classes: int):
        super().__init__()
        spec = ARCHS[arch]
        self.arch, self.num_classes, self.family = arch, num_classes, spec.family
        if spec.family == "deeplabv3_resnet":
            self.backbone = ResNetBackbone(spec.block, spec.depths, spec.widths, spec.output_stride)
            self.head = DeepLabV3Head(self.backbone.channels["layer4"], num_classes, spec.head_width, spec.rates)
            self.feature_channels = {**self.backbone.channels, **self.head.channels}
        else:
            self.backbone, self.head, self.feature_channels = build_mobilenetv3(spec.family.split("_")[0], num_classes)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        size = (x.shape[-2], x.shape[-1])
        feats = dict(self.backbone(x))
        if self.family == "deeplabv3_resnet":
            logits, head_feats = self.head(feats["layer4"])
            feats.update(head_feats)
        else:
            logits = mobilenetv3_forward(self.family.split("_")[0], self.head, feats)
        logits = upsample_to(logits, size)
        return (logits, feats) if return_features else logits


def build_model(arch: str, num_classes: int, pretrained: str = "") -> SegModel:
    """Build `arch` for `num_classes`. pretrained: '' (random init), 'torchvision' (ImageNet backbone,
    downloads once into the torch cache), 'torchvision_cached' (the same weights only when they are already in the
    torch cache; otherwise random init with a warning), or a local .pth/.pt file (a full state dict or a backbone
    one). `model.init` says what was done."""
    if arch not in ARCHS:
        import difflib

        close = difflib.get_close_matches(arch, list(ARCHS), n=1)
        raise ConfigError(f"unknown architecture '{arch}'", fix=(f"did you mean '{close[0]}'? " if close else "")
                          + f"available: {', '.join(ARCHS)}")
    if num_classes < 1 or num_classes > 255:
        raise ConfigError("num_classes must be between 1 and 255", seen=str(num_classes))
    model = SegModel(arch, num_classes)
    model.init = "random"  # what the weights started from; the trainer records it in the checkpoint manifest
    if pretrained == "torchvision_cached":
        if torchvision_weights(arch) is None:
            log.warning("%s has custom widths and no torchvision ImageNet weights: it starts from random weights", arch)
            model.init = "random (torchvision_cached: no torchvision weights for this architecture)"
            return model
        cached = cached_torchvision_weights(arch)
        if cached is None:
            log.warning("PRETRAINED WEIGHTS NOT FOUND: %s starts from random weights. pretrained: torchvision_cached "
                        "loads ImageNet weights only from the torch cache (%s/checkpoints), and none are there; put "
                        "them there (or use pretrained: torchvision, which downloads them) for ImageNet-initialised "
                        "training", arch, torch.hub.get_dir())
            model.init = "random (torchvision_cached: no weights in the torch cache)"
            return model
        pretrained = "torchvision"
    if pretrained:
        load_pretrained(model, pretrained)
        model.init = f"pretrained: {pretrained}"
    return model


def torchvision_weights(arch: str):
    """The torchvision ImageNet weights enum entry for `arch`'s backbone, or None for custom widths."""
    import torchvision

    spec = ARCHS[arch]
    name = "mobilenet_v3_large" if spec.family.endswith("_mobilenetv3") else spec.torchvision_backbone
    if not name:
        return None
    return torchvision.models.get_model_weights(name).IMAGENET1K_V1


def cached_torchvision_weights(arch: str) -> Path | None:
    """The file of `arch`'s torchvision ImageNet weights in the torch cache, if it is there (nothing downloads)."""
    weights = torchvision_weights(arch)
    if weights is None:
        return None
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    return path if path.is_file() else None


def resolved_pretrained(arch: str, pretrained: str) -> str:
    """What `pretrained` will load on this machine: torchvision_cached becomes 'torchvision' when the weights are in
    the torch cache and '' (random) when not, so a run's identity changes when the weights appear."""
    if pretrained != "torchvision_cached":
        return pretrained
    return "torchvision" if cached_torchvision_weights(arch) is not None else ""


def load_pretrained(model: SegModel, source: str) -> None:
    spec = ARCHS[model.arch]
    if source == "torchvision":
        import torchvision

        if spec.family.endswith("_mobilenetv3"):
            tv = torchvision.models.mobilenet_v3_large(weights="IMAGENET1K_V1")
            state = {k.replace("features.", "", 1): v for k, v in tv.state_dict().items() if k.startswith("features.")}
            missing = model.backbone.load_state_dict(state, strict=False)
        else:
            if not spec.torchvision_backbone:
                raise ConfigError(f"{model.arch} has no torchvision ImageNet weights (its widths are custom)",
                                  fix="train from scratch or pass a local .pth")
            tv = getattr(torchvision.models, spec.torchvision_backbone)(weights="IMAGENET1K_V1")
            state = {k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")}
            missing = model.backbone.load_state_dict(state, strict=False)
        log.info("loaded torchvision ImageNet backbone for %s (missing: %d)", model.arch, len(missing.missing_keys))
        return
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"pretrained weights file not found: {path}", fix="pass an existing .pth or 'torchvision'")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(f"cannot read weights {path}", seen=f"{type(e).__name__}: {e}") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    own = model.state_dict()
    # a torchvision segmentation state dict names the head `classifier.`; ours is `head.`
    state = {("head." + k[len("classifier."):] if k.startswith("classifier.") else k): v for k, v in state.items()}
    target = model if any(k in own for k in state) else model.backbone
    result = target.load_state_dict(state, strict=False)
    loaded = len(state) - len(result.unexpected_keys)
    if loaded == 0:
        raise ConfigError(f"no tensor in {path} matches {model.arch}", seen=f"first keys: {list(state)[:3]}")
    log.info("loaded %d tensors from %s (%d missing, %d unexpected)", loaded, path,
             len(result.missing_keys), len(result.unexpected_keys))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
