"""MedMNIST networks: the Flower CNN at 28x28 (flattened size 256), DenseNet121, registration, sizes from the data."""

import pytest
import torch

from medfl.common.networks import build_network
from medfl.common.settings import ConfigError, NetworkSpec
from medfl.federations.medmnist.data import medmnist_info
from medfl.federations.medmnist.networks import FlowerCNN, network_for_data


@pytest.mark.parametrize("in_channels,num_classes", [(3, 9), (1, 2)])
def test_cnn_maps_28x28_images_to_logits(in_channels, num_classes):
    model = build_network("medmnist_cnn", in_channels=in_channels, num_classes=num_classes)
    assert model(torch.zeros(2, in_channels, 28, 28)).shape == (2, num_classes)
    assert model.classifier[0].in_features == 16 * 4 * 4


def test_cnn_keeps_the_flower_layer_sizes():
    model = FlowerCNN(in_channels=3, num_classes=10, image_size=32)  # the CIFAR-10 original
    assert model.classifier[0].in_features == 16 * 5 * 5
    assert sum(p.numel() for p in model.parameters()) == 62006  # LeNet-5 of the PyTorch/Flower tutorials
    assert sum(p.numel() for p in FlowerCNN(3, 9).parameters()) == 44641  # PathMNIST, as docs/medmnist.md says
    with pytest.raises(ValueError, match="at least 16 pixels, got 12"):
        FlowerCNN(image_size=12)


def test_densenet121_option():
    model = build_network("medmnist_densenet121", in_channels=1, num_classes=2, image_size=32)
    model.eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 32, 32)).shape == (1, 2)
    with pytest.raises(ValueError, match="densenet121 needs images of at least 32x32, got 28"):
        build_network("medmnist_densenet121", in_channels=3, num_classes=9)


def test_network_sizes_come_from_the_data():
    breast = network_for_data(NetworkSpec(name="medmnist_cnn"), medmnist_info("breastmnist"), image_size=28)
    assert breast == NetworkSpec(name="medmnist_cnn", args={"in_channels": 1, "num_classes": 2, "image_size": 28})
    path_64 = network_for_data(NetworkSpec(name="medmnist_cnn", args={"num_classes": 9}), medmnist_info("pathmnist"), 64)
    model = build_network(path_64.name, **path_64.args)
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 9)
    with pytest.raises(ValueError, match="network args in_channels=3 but the data has 1; leave in_channels out"):
        network_for_data(NetworkSpec(name="medmnist_cnn", args={"in_channels": 3}), medmnist_info("breastmnist"), 28)
    with pytest.raises(ConfigError, match="missing key 'name'"):
        NetworkSpec.load({"args": {}}, "config_train.json")
