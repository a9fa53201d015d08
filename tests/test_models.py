"""Models return logits at input size and named features; weights load from local files only."""

import pytest
import torch

from nfdseg.distill.models import ARCHS, build_model, count_parameters
from nfdseg.errors import ConfigError


@pytest.mark.parametrize("arch", ["deeplabv3_resnet_tiny", "deeplabv3_resnet10_w8", "lraspp_mobilenetv3_large"])
def test_logits_and_features(arch):
    model = build_model(arch, 5).eval()
    x = torch.randn(2, 3, 64, 48)
    logits, feats = model(x, return_features=True)
    assert logits.shape == (2, 5, 64, 48)
    for name, ch in model.feature_channels.items():
        assert feats[name].shape[:2] == (2, ch), name
    assert torch.equal(model(x), logits)


def test_standard_architectures_have_published_sizes():
    # DeepLabV3-ResNet101 with 21 classes has ~58.6M parameters (torchvision's is 60.99M with its aux head).
    assert 58.0e6 < count_parameters(build_model("deeplabv3_resnet101", 21)) < 59.5e6
    assert 15.0e6 < count_parameters(build_model("deeplabv3_resnet18", 19)) < 17.0e6
    assert set(ARCHS) >= {"deeplabv3_resnet101", "deeplabv3_resnet50", "deeplabv3_resnet18", "lraspp_mobilenetv3_large"}


def test_local_pretrained_file(tmp_path):
    src = build_model("deeplabv3_resnet_tiny", 3)
    torch.save(src.backbone.state_dict(), tmp_path / "backbone.pth")
    dst = build_model("deeplabv3_resnet_tiny", 3, pretrained=str(tmp_path / "backbone.pth"))
    assert torch.equal(dst.backbone.conv1.weight, src.backbone.conv1.weight)
    torch.save({"unrelated": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ConfigError, match="no tensor"):
        build_model("deeplabv3_resnet_tiny", 3, pretrained=str(tmp_path / "other.pth"))
    with pytest.raises(ConfigError, match="not found"):
        build_model("deeplabv3_resnet_tiny", 3, pretrained=str(tmp_path / "missing.pth"))


def test_unknown_arch_suggests():
    with pytest.raises(ConfigError, match="did you mean 'deeplabv3_resnet18'"):
        build_model("deeplabv3_resnet81", 3)
