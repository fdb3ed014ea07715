"""MedMNIST networks: the seed's "getting started" CNN, Flower's LeNet at 28x28 (flattened size 256), DenseNet121,
registration, sizes from the data."""

import pytest
import torch

from medfl.common.networks import build_network
from medfl.common.settings import ConfigError, NetworkSpec
from medfl.federations.medmnist.data import medmnist_info
from medfl.federations.medmnist.networks import FlowerLeNet, MedMNISTCNN, network_for_data

# Parameters of the seed's Net (fl_demo/cnn_pathmnist.py), counted by hand: a conv3x3(i, o) has 9 i o + o, a
# BatchNorm2d(o) 2 o (its running statistics are buffers), a Linear(i, o) i o + o.
#   layer1 9*C*16+16 + 32 | layer2 2320 + 32 | layer3 9280 + 128 | layer4 36928 + 128 | layer5 36928 + 128
#   fc: 1024*128+128 = 131200, 128*128+128 = 16512, 128*K+K
SEED_CNN_PARAMETERS = {(3, 9): 448 + 32 + 2320 + 32 + 9280 + 128 + 36928 + 128 + 36928 + 128 + 131200 + 16512 + 1161,
                       (1, 2): 160 + 32 + 2320 + 32 + 9280 + 128 + 36928 + 128 + 36928 + 128 + 131200 + 16512 + 258}


@pytest.mark.parametrize("in_channels,num_classes", [(3, 9), (1, 2)])
def test_seed_cnn_maps_28x28_images_to_logits_with_the_original_parameter_count(in_channels, num_classes):
    model = build_network("medmnist_cnn", in_channels=in_channels, num_classes=num_classes)
    assert isinstance(model, MedMNISTCNN)
    assert model(torch.zeros(2, in_channels, 28, 28)).shape == (2, num_classes)
    assert sum(p.numel() for p in model.parameters()) == SEED_CNN_PARAMETERS[in_channels, num_classes]
    assert SEED_CNN_PARAMETERS == {(3, 9): 235225, (1, 2): 234034}


def test_seed_cnn_has_the_original_layout_and_state_dict_keys():
    model = MedMNISTCNN(in_channels=3, num_classes=9)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (3, 16, (3, 3), (0, 0)), (16, 16, (3, 3), (0, 0)), (16, 64, (3, 3), (0, 0)), (64, 64, (3, 3), (0, 0)),
        (64, 64, (3, 3), (1, 1))]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 5
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.modules()) == 2
    assert [(m.in_features, m.out_features) for m in model.fc if isinstance(m, torch.nn.Linear)] == [
        (64 * 4 * 4, 128), (128, 128), (128, 9)]
    sizes, x = [], torch.zeros(1, 3, 28, 28)
    for block in (model.layer1, model.layer2, model.layer3, model.layer4, model.layer5):
        x = block(x)
        sizes.append(x.shape[-1])
    assert sizes == [26, 12, 10, 8, 4]  # 28 -> 26 -> 24 -> 12 -> 10 -> 8 -> 8 -> 4
    keys = list(model.state_dict())  # the original's names, so its checkpoints load
    assert keys[:7] == ["layer1.0.weight", "layer1.0.bias", "layer1.1.weight", "layer1.1.bias",
                        "layer1.1.running_mean", "layer1.1.running_var", "layer1.1.num_batches_tracked"]
    assert keys[-6:] == ["fc.0.weight", "fc.0.bias", "fc.2.weight", "fc.2.bias", "fc.4.weight", "fc.4.bias"]
    assert MedMNISTCNN(3, 9, image_size=64)(torch.zeros(1, 3, 64, 64)).shape == (1, 9)
    with pytest.raises(ValueError, match="at least 16 pixels, got 15"):
        MedMNISTCNN(image_size=15)


@pytest.mark.parametrize("in_channels,num_classes", [(3, 9), (1, 2)])
def test_lenet_maps_28x28_images_to_logits(in_channels, num_classes):
    model = build_network("flower_lenet", in_channels=in_channels, num_classes=num_classes)
    assert model(torch.zeros(2, in_channels, 28, 28)).shape == (2, num_classes)
    assert model.classifier[0].in_features == 16 * 4 * 4


def test_lenet_keeps_the_flower_layer_sizes():
    model = FlowerLeNet(in_channels=3, num_classes=10, image_size=32)  # the CIFAR-10 original
    assert model.classifier[0].in_features == 16 * 5 * 5
    assert sum(p.numel() for p in model.parameters()) == 62006  # LeNet-5 of the PyTorch/Flower tutorials
    assert sum(p.numel() for p in FlowerLeNet(3, 9).parameters()) == 44641  # PathMNIST, as docs/medmnist.md says
    with pytest.raises(ValueError, match="at least 16 pixels, got 12"):
        FlowerLeNet(image_size=12)


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
