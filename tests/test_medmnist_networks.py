"""MedMNIST networks: the Flower CNN at 28x28 (flattened size 256), DenseNet121, and the factory's errors."""

import pytest
import torch

from medfl.fedavg_medmnist.networks import FlowerCNN, build_medmnist_network


@pytest.mark.parametrize("in_channels,num_classes", [(3, 9), (1, 2)])
def test_cnn_maps_28x28_images_to_logits(in_channels, num_classes):
    model = build_medmnist_network("cnn", in_channels, num_classes)
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
    model = build_medmnist_network("densenet121", 1, 2, image_size=32)
    model.eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 32, 32)).shape == (1, 2)
    with pytest.raises(ValueError, match="densenet121 needs images of at least 32x32, got 28"):
        build_medmnist_network("densenet121", 3, 9)


def test_unknown_network_is_refused():
    with pytest.raises(ValueError, match="unknown network 'resnet18'"):
        build_medmnist_network("resnet18", 3, 9)
