"""MoCo-v2 pre-training of a FedMAS prior: the script's checkpoint loads with the prior loader."""


import pytest
import torch

from medfl.fedmas import pretrain
from medfl.fedmas.moco import MoCoV2, MoCoV2Augment
from medfl.fedmas.prior import load_moco_prior

N_IMAGES = 8


@pytest.fixture
def image_folder(shared_data, tmp_path):
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    for source in sorted((shared_data / "ham10000_mini" / "images").glob("*.jpg"))[:N_IMAGES]:
        (folder / source.name).symlink_to(source)
    return folder


def test_one_epoch_writes_a_checkpoint_the_prior_loader_reads(image_folder, tmp_path):
    output = tmp_path / "prior" / "moco_r18.pth.tar"
    args = ["--images", str(image_folder), "--output", str(output), "--depth", "18", "--image-size", "32"]
    pretrain.main([*args, "--epochs", "1", "--batch-size", "4", "--queue-size", "16", "--bn-splits", "2"])
    checkpoint = torch.load(output, weights_only=True)
    assert checkpoint["epoch"] == 1 and checkpoint["arch"] == "resnet18"
    keys = checkpoint["state_dict"].keys()
    assert {"module.queue", "module.queue_ptr", "module.encoder_q.fc.2.weight", "module.encoder_k.conv1.weight"} <= keys
    assert [p.name for p in output.parent.iterdir()] == [output.name]  # no temporary file left behind
    prior = load_moco_prior(output, depth=18)
    assert prior(torch.rand(2, 3, 32, 32)).shape == (2, 512)


def test_datalists_restrict_the_images_to_those_listed(image_folder, tmp_path):
    names = sorted(p.name for p in image_folder.iterdir())[:3]
    datalist = tmp_path / "train.csv"
    datalist.write_text("image,label\n" + "".join(f"{name},0\n" for name in reversed(names)))
    script = pretrain
    assert [p.name for p in script.TwoViews(image_folder, MoCoV2Augment(16), datalists=[datalist]).files] == names
    unnamed = tmp_path / "unnamed.csv"
    unnamed.write_text("path,label\nx.jpg,0\n")
    with pytest.raises(ValueError, match=r"unnamed\.csv: no 'image' column"):
        script.TwoViews(image_folder, MoCoV2Augment(16), datalists=[unnamed])


def test_too_few_images_for_a_batch_is_an_error(image_folder, tmp_path):
    args = ["--images", str(image_folder), "--output", str(tmp_path / "p.pth.tar"), "--batch-size", "64"]
    with pytest.raises(ValueError, match=r"unlabelled: 8 images, fewer than --batch-size 64"):
        pretrain.main(args)


def test_queue_wraps_around_and_key_encoder_follows_by_momentum():
    torch.manual_seed(0)
    model = MoCoV2(depth=18, dim=8, queue_size=6, bn_splits=1, momentum=0.5)
    with torch.no_grad():
        model.encoder_q.conv1.weight.add_(1.0)
    before = model.encoder_k.conv1.weight.clone()
    for _ in range(2):
        loss = model(torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16))
    assert torch.isfinite(loss) and model.queue_ptr.item() == 2
    assert torch.allclose(model.queue.norm(dim=0), torch.ones(6))
    assert not torch.equal(model.encoder_k.conv1.weight, before)


def test_augmented_views_have_the_crop_size():
    view = MoCoV2Augment(24)(torch.rand(3, 30, 40))
    assert view.shape == (3, 24, 24) and torch.isfinite(view).all()
