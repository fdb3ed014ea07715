"""FedMAS free-head ResNet (§3.2) and torchvision-layout checkpoint loading."""

import pytest
import torch

from medfl.common.errors import DataError
from medfl.common.networks import build_network
from medfl.common.resnet import depth_from_keys, resnet_trunk, trunk_features
from medfl.federations.isic2019.networks import ResNetClassifier
from medfl.fedmas.networks import FreeHeadResNet

# torchvision's resnet18 / resnet50 parameter counts (11,689,512 / 25,557,032) minus their 1000-class fc
TORCHVISION_TRUNK_PARAMS = {18: 11_689_512 - 513_000, 50: 25_557_032 - 2_049_000}


def test_heads_return_features_logits_projection_and_free_logits():
    model = FreeHeadResNet(n_classes=8, prior_dim=16).eval()
    x = torch.rand(2, 3, 32, 32)
    features, z1, p, z2 = model.heads(x)
    assert features.shape == (2, 512)
    assert z1.shape == (2, 8) and z2.shape == (2, 8)
    assert p.shape == (2, 16)
    assert torch.allclose(z2, model.fc_free(p))
    assert torch.equal(model(x), z1)  # forward is the classifier's prediction


def test_registered_networks_share_the_classifier_keys():
    baseline = build_network("resnet_classifier", n_classes=8, depth=18)
    free = build_network("free_head_resnet", n_classes=8, prior_dim=16, depth=18)
    assert isinstance(baseline, ResNetClassifier) and isinstance(free, FreeHeadResNet)
    extra = set(free.state_dict()) - set(baseline.state_dict())
    assert extra and all(k.startswith(("p_free.", "fc_free.")) for k in extra)
    assert baseline.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 8)


@pytest.mark.parametrize("depth", [18, 50])
def test_trunk_has_torchvision_keys_and_parameter_count(depth):
    trunk = resnet_trunk(depth)
    keys = trunk.state_dict().keys()
    assert {"conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer4.0.downsample.0.weight"} <= keys
    assert not any(k.startswith("fc.") or k.endswith("downsample.0.bias") for k in keys)
    assert sum(p.numel() for p in trunk.parameters()) == TORCHVISION_TRUNK_PARAMS[depth]
    assert trunk.eval()(torch.rand(1, 3, 32, 32)).shape == (1, trunk_features(depth))
    assert depth_from_keys(keys, source="test") == depth


def test_depth_from_keys_rejects_unknown_layouts():
    keys = [k for k in resnet_trunk(18).state_dict() if not k.startswith("layer4.1.")]
    with pytest.raises(ValueError, match=r"my\.pth: not a supported ResNet"):
        depth_from_keys(keys, source="my.pth")


@pytest.mark.parametrize("wrapped", [False, True])
def test_loads_torchvision_checkpoint_and_skips_fc(tmp_path, wrapped):
    state = resnet_trunk(18).state_dict()
    state.update({"fc.weight": torch.rand(1000, 512), "fc.bias": torch.rand(1000)})
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": state} if wrapped else state, path)
    model = FreeHeadResNet(prior_dim=16)
    model.load_trunk_checkpoint(path)
    assert torch.equal(model.trunk.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    assert model.fc.weight.shape == (8, 512)


def test_checkpoint_errors_name_file_and_keys(tmp_path):
    state = resnet_trunk(18).state_dict()
    del state["layer2.0.bn1.weight"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    expected = r"broken\.pth.*missing keys: layer2\.0\.bn1\.weight.*unexpected keys: extra\.weight"
    with pytest.raises(ValueError, match=expected):
        FreeHeadResNet().load_trunk_checkpoint(path)
    state = resnet_trunk(34).state_dict()
    torch.save(state, path)
    with pytest.raises(ValueError, match="unexpected keys: layer"):
        FreeHeadResNet().load_trunk_checkpoint(path)
    with pytest.raises(DataError, match="absent.pth: ResNet checkpoint not found"):
        FreeHeadResNet().load_trunk_checkpoint(tmp_path / "absent.pth")


def test_shape_mismatch_is_reported(tmp_path):
    state = resnet_trunk(18).state_dict()
    state["conv1.weight"] = torch.zeros(64, 1, 7, 7)
    path = tmp_path / "grey.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"shape mismatches: conv1\.weight \(64, 1, 7, 7\) != \(64, 3, 7, 7\)"):
        FreeHeadResNet().load_trunk_checkpoint(path)
