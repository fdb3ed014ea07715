"""MoCo-v2 pre-training of a FedMAS prior: the script's checkpoint loads with the prior loader."""


import math

import pytest
import torch

from medfl.common.errors import DataError
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


def test_symmetric_loss_enqueues_the_keys_of_both_views():
    torch.manual_seed(0)
    model = MoCoV2(depth=18, dim=8, queue_size=16, bn_splits=1, symmetric=True)
    loss = model(torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16))
    assert torch.isfinite(loss) and model.queue_ptr.item() == 8
    with pytest.raises(ValueError, match="8 keys per step do not fit a queue of 6"):
        MoCoV2(depth=18, dim=8, queue_size=6, bn_splits=1, symmetric=True)(torch.rand(4, 3, 16, 16),
                                                                            torch.rand(4, 3, 16, 16))


def test_learning_rate_warms_up_linearly_then_decays_by_a_cosine_to_zero():
    assert pretrain.learning_rate(0.1, 0.0, 0.1) == 0.0
    assert pretrain.learning_rate(0.1, 0.05, 0.1) == pytest.approx(0.05)
    assert pretrain.learning_rate(0.1, 0.1, 0.1) == pytest.approx(0.1)
    assert pretrain.learning_rate(0.1, 0.55, 0.1) == pytest.approx(0.05)
    assert pretrain.learning_rate(0.1, 1.0, 0.1) == pytest.approx(0.0)
    assert pretrain.learning_rate(0.03, 0.5, 0.0) == pytest.approx(0.015)  # the official cosine, no warm-up


def test_schedule_follows_the_time_budget_when_it_is_ahead_of_the_steps():
    assert pretrain.schedule_progress(10, 100, elapsed_s=5.0, budget_s=0.0) == 0.1
    assert pretrain.schedule_progress(10, 100, elapsed_s=5.0, budget_s=10.0) == 0.5
    assert pretrain.schedule_progress(90, 100, elapsed_s=5.0, budget_s=10.0) == 0.9


def test_presets_keep_the_official_recipe_as_default_and_options_override_them(tmp_path):
    base = ["--images", str(tmp_path), "--output", str(tmp_path / "p.pth.tar")]
    official = pretrain.recipe_from_args(pretrain.parse_args(base))
    assert (official.epochs, official.batch_size, official.lr, official.queue_size, official.key_momentum,
            official.temperature, official.blur_sigma) == (200, 256, 0.03, 65536, 0.999, 0.2, (0.1, 2.0))
    small = pretrain.recipe_from_args(pretrain.parse_args(
        [*base, "--preset", "small_images", "--image-size", "32", "--queue-size", "1024", "--symmetric"]))
    assert small.queue_size == 1024 and small.symmetric and small.key_momentum == 0.99
    assert small.blur_sigma == pytest.approx((0.1 * 32 / 224, 2.0 * 32 / 224))
    with pytest.raises(ValueError, match="--queue-size 64 is smaller than the 128 keys enqueued per step"):
        pretrain.recipe_from_args(pretrain.parse_args([*base, "--batch-size", "128", "--queue-size", "64"]))


def test_the_checkpoint_records_the_recipe_and_the_loss_per_epoch(image_folder, tmp_path):
    output = tmp_path / "moco.pth.tar"
    pretrain.main(["--images", str(image_folder), "--output", str(output), "--depth", "18", "--image-size", "16",
                   "--preset", "small_images", "--epochs", "2", "--batch-size", "4", "--queue-size", "16",
                   "--bn-splits", "2", "--threads", "1"])
    checkpoint = torch.load(output, weights_only=True)
    assert checkpoint["recipe"]["key_momentum"] == 0.99 and checkpoint["epoch"] == 2
    assert [h["epoch"] for h in checkpoint["history"]] == [1, 2]
    assert all(h["steps"] == 2 and math.isfinite(h["loss"]) for h in checkpoint["history"])


def test_a_time_budget_stops_training_and_keeps_the_last_checkpoint(image_folder, tmp_path):
    output = tmp_path / "moco.pth.tar"
    pretrain.main(["--images", str(image_folder), "--output", str(output), "--depth", "18", "--image-size", "16",
                   "--epochs", "1000", "--batch-size", "4", "--queue-size", "16", "--bn-splits", "2",
                   "--time-budget", "0.02"])  # 1.2 s
    checkpoint = torch.load(output, weights_only=True)
    assert 1 <= checkpoint["epoch"] < 1000 and len(checkpoint["history"]) == checkpoint["epoch"]


def test_augmentation_settings_are_checked():
    with pytest.raises(ValueError, match="crop_scale"):
        MoCoV2Augment(16, crop_scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="blur_sigma"):
        MoCoV2Augment(16, blur_sigma=(2.0, 1.0))


def test_in_memory_training_decodes_once_and_augments_whole_batches(image_folder, tmp_path):
    output = tmp_path / "moco.pth.tar"
    pretrain.main(["--images", str(image_folder), "--output", str(output), "--depth", "18", "--image-size", "32",
                   "--preset", "small_images", "--epochs", "1", "--batch-size", "4", "--queue-size", "16",
                   "--bn-splits", "2", "--in-memory"])
    checkpoint = torch.load(output, weights_only=True)
    assert checkpoint["history"][0]["steps"] == N_IMAGES // 4
    assert load_moco_prior(output)(torch.rand(2, 3, 32, 32)).shape == (2, 512)


def test_in_memory_images_must_share_one_size(tmp_path):
    from PIL import Image

    for name, size in (("a.png", (8, 8)), ("b.png", (8, 6))):
        Image.new("RGB", size).save(tmp_path / name)
    with pytest.raises(DataError, match=r"b\.png: is \(6, 8\) pixels, the first image \(8, 8\)"):
        pretrain.decode_images(pretrain.image_files(tmp_path))
    one = pretrain.decode_images([tmp_path / "a.png"])
    assert one.dtype == torch.uint8 and one.shape == (1, 3, 8, 8)
