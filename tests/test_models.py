"""Models return logits at input size and named features; weights load from local files only."""

import pytest
import torch

from nfdseg.models import ARCHS, build_model, count_parameters
from nfdseg.errors import ConfigError


@pytest.mark.parametrize("arch", ["deeplabv3_resnet_tiny", "deeplabv3_resnet10_w8", "lraspp_mobilenetv3_large",
                                  "deeplabv3_mobilenetv3_large"])
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


def test_deeplabv3_mobilenetv3_matches_torchvision_and_takes_its_weights(tmp_path):
    from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

    tv = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=6, aux_loss=False).eval()
    ours = build_model("deeplabv3_mobilenetv3_large", 6).eval()
    assert count_parameters(ours) == count_parameters(tv)  # 11.0M: the same network, no extra layers
    torch.save(tv.state_dict(), tmp_path / "tv.pth")  # torchvision names (backbone.*, classifier.*) load as they are
    loaded = build_model("deeplabv3_mobilenetv3_large", 6, pretrained=str(tmp_path / "tv.pth")).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        want = tv(x)["out"]
        got, feats = loaded(x, return_features=True)
    assert torch.allclose(got, want, atol=1e-5)
    assert {k: v.shape[1] for k, v in feats.items()} == {"low": 40, "high": 960, "aspp": 256, "head": 256}
    assert feats["low"].shape[-2:] == (8, 12) and feats["high"].shape[-2:] == (4, 6)  # strides 8 and 16


def test_default_pairs_per_family():
    from nfdseg.models import default_pairs

    assert default_pairs("deeplabv3_resnet", "deeplabv3_resnet") == (
        ("layer2", "layer2"), ("layer3", "layer3"), ("layer4", "layer4"), ("head", "head"))
    assert default_pairs("deeplabv3_resnet", "deeplabv3_mobilenetv3") == (
        ("low", "layer2"), ("high", "layer4"), ("head", "head"))
    assert default_pairs("deeplabv3_mobilenetv3", "deeplabv3_resnet")[0] == ("layer2", "low")
    for t in ("deeplabv3_resnet", "deeplabv3_mobilenetv3", "lraspp_mobilenetv3"):  # every pair of families resolves
        for s in ("deeplabv3_resnet", "deeplabv3_mobilenetv3", "lraspp_mobilenetv3"):
            tm, sm = (build_model(a, 3) for a in ("deeplabv3_resnet_tiny" if f == "deeplabv3_resnet" else
                                                  f.replace("_mobilenetv3", "_mobilenetv3_large") for f in (t, s)))
            for s_name, t_name in default_pairs(t, s):
                assert s_name in sm.feature_channels and t_name in tm.feature_channels, (t, s, s_name, t_name)


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


def test_torchvision_cached_loads_only_what_is_in_the_torch_cache(tmp_path, monkeypatch):
    import torch
    import torchvision

    from nfdseg.models import build_model, resolved_pretrained, torchvision_weights

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    m = build_model("deeplabv3_resnet18", 5, "torchvision_cached")
    assert m.init.startswith("random (torchvision_cached: no weights")
    assert resolved_pretrained("deeplabv3_resnet18", "torchvision_cached") == ""
    assert build_model("deeplabv3_resnet_tiny", 5, "torchvision_cached").init.startswith("random")
    # put a (randomly initialised) torchvision ResNet-18 state dict where the download would have gone
    tv = torchvision.models.resnet18()
    path = tmp_path / "hub" / "checkpoints" / torchvision_weights(m.arch).url.rsplit("/", 1)[1]
    path.parent.mkdir(parents=True)
    torch.save(tv.state_dict(), path)
    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict",
                        lambda self, *a, **k: torch.load(path, weights_only=True), raising=True)
    assert resolved_pretrained("deeplabv3_resnet18", "torchvision_cached") == "torchvision"
    loaded = build_model("deeplabv3_resnet18", 5, "torchvision_cached")
    assert loaded.init == "pretrained: torchvision"
    assert torch.equal(loaded.backbone.state_dict()["layer1.0.conv1.weight"], tv.state_dict()["layer1.0.conv1.weight"])
