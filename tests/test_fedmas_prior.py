"""FedMAS self-supervised prior (§3.3): loading the MoCo-v2 checkpoint format, freezing, clear errors."""

import pytest
import torch
from torch import nn

from medfl.common.errors import DataError
from medfl.common.resnet import resnet_trunk
from medfl.fedmas.moco import MoCoV2
from medfl.fedmas.prior import checkpoint_sha256, load_moco_prior


def save_moco_checkpoint(path, depth=18):
    """A tiny checkpoint with the official layout: module.encoder_q.* (MLP fc), module.encoder_k.*, queue."""
    moco = MoCoV2(depth=depth, dim=16, queue_size=8)
    state = {f"module.{k}": v for k, v in moco.state_dict().items()}
    torch.save({"epoch": 1, "arch": f"resnet{depth}", "state_dict": state, "optimizer": {}}, path)
    return moco


def test_moco_checkpoint_loads_as_frozen_pooled_feature_encoder(tmp_path):
    path = tmp_path / "moco.pth.tar"
    moco = save_moco_checkpoint(path)
    prior = load_moco_prior(path)
    assert prior.out_features == 512
    assert not prior.training and not any(p.requires_grad for p in prior.parameters())
    assert torch.equal(prior.encoder.layer4[1].conv2.weight, moco.encoder_q.layer4[1].conv2.weight)
    x = torch.rand(2, 3, 32, 32)
    h = prior(x)
    assert h.shape == (2, 512) and not h.requires_grad
    reference = resnet_trunk(18)
    reference.load_state_dict({k: v for k, v in moco.encoder_q.state_dict().items() if not k.startswith("fc.")})
    assert torch.allclose(h, reference.eval()(x), atol=1e-6)


def test_prior_stays_in_eval_mode_inside_a_training_parent(tmp_path):
    path = tmp_path / "moco.pth.tar"
    save_moco_checkpoint(path)
    parent = nn.ModuleDict({"prior": load_moco_prior(path, depth=18)}).train()
    assert not parent["prior"].training and not parent["prior"].encoder.bn1.training


def test_batch_statistics_reproduces_the_round0_bn_update(tmp_path):
    path = tmp_path / "moco.pth.tar"
    save_moco_checkpoint(path)
    prior = load_moco_prior(path)
    before = prior.encoder.bn1.running_mean.clone()
    prior(torch.rand(4, 3, 32, 32))
    assert torch.equal(prior.encoder.bn1.running_mean, before)
    with prior.batch_statistics():
        prior(torch.rand(4, 3, 32, 32))
    assert not torch.equal(prior.encoder.bn1.running_mean, before)
    assert not prior.encoder.training


def test_depth_mismatch_names_file_and_depths(tmp_path):
    path = tmp_path / "moco.pth.tar"
    save_moco_checkpoint(path)
    with pytest.raises(ValueError, match=r"moco\.pth\.tar: holds a ResNet-18 encoder, but ResNet-50 was requested"):
        load_moco_prior(path, depth=50)


def test_wrong_formats_fail_with_clear_messages(tmp_path):
    plain = tmp_path / "resnet18.pth"
    torch.save(resnet_trunk(18).state_dict(), plain)
    with pytest.raises(ValueError, match=r"resnet18\.pth: not a MoCo-v2 checkpoint.*'state_dict'.*conv1\.weight"):
        load_moco_prior(plain)
    no_prefix = tmp_path / "other.pth.tar"
    torch.save({"state_dict": resnet_trunk(18).state_dict()}, no_prefix)
    with pytest.raises(ValueError, match=r"other\.pth\.tar: .*no 'state_dict' key starts with 'module\.encoder_q\.'"):
        load_moco_prior(no_prefix)
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"notes\.txt: cannot be read as a torch checkpoint"):
        load_moco_prior(text)
    with pytest.raises(DataError, match=r"absent\.pth\.tar: MoCo-v2 prior checkpoint not found"):
        load_moco_prior(tmp_path / "absent.pth.tar")


def test_checksum_identifies_the_prior_file(tmp_path):
    path = tmp_path / "moco.pth.tar"
    save_moco_checkpoint(path)
    copy = tmp_path / "copy.pth.tar"
    copy.write_bytes(path.read_bytes())
    assert checkpoint_sha256(path) == checkpoint_sha256(copy)
    assert len(checkpoint_sha256(path)) == 64
