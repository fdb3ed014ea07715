"""Slim VGG16: output shape, bias-free conv / linear layers, original state-dict names."""

import torch
from torch import nn

from medfl.federations.dermoscopy.networks import VGG16Slim


def test_forward_shape_on_original_input_size():
    model = VGG16Slim(num_classes=3).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 128, 128))
    assert logits.shape == (2, 3)


def test_layers_match_original_architecture():
    model = VGG16Slim()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [c.out_channels for c in convs] == [32, 32, 64, 64, 128, 128, 128, 128, 128, 128, 256, 256, 256]
    assert all(c.bias is None and c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert [(l.in_features, l.out_features) for l in linears] == [(256, 64), (64, 3)]
    assert all(l.bias is None for l in linears)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 5


def test_state_dict_names_follow_original():
    keys = set(VGG16Slim().state_dict())
    for key in ("layer1.0.conv.weight", "layer1.0.bn.running_var", "layer5.2.conv.weight",
                "fc1.linear.weight", "fc1.bn.weight", "fc2.linear.weight"):
        assert key in keys
    assert not any(key.endswith("bias") and ".bn." not in key for key in keys)
