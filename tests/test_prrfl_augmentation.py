"""The dermoscopy client's batched training augmentation against the per-image MONAI pipeline it replaces: each
operation against its MONAI transform at the same parameters, each parameter's distribution against the
specification, the whole pipeline's pixel statistics against MONAI's (two-sample KS tests that a missing flip or
a doubled shift range fails), and the DataLoader path's batches without augmentation and with ``per_image``."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from monai import transforms as mt
from PIL import Image
from scipy import stats
from torch.utils.data import DataLoader

from medfl.common.executor import seed_random_transforms
from medfl.federations.dermoscopy import preparation as prepare
from medfl.federations.dermoscopy.batch_augmentation import (
    GAUSSIAN,
    IDENTITY,
    MEDIAN,
    NOISE,
    BatchAugmentation,
    batched_train_transforms,
    draw,
    gaussian_blur,
    warp,
)
from medfl.federations.dermoscopy.client import DermoscopySettings
from medfl.federations.dermoscopy.data import build_client_datasets
from medfl.federations.dermoscopy.median import median_filter
from medfl.federations.dermoscopy.transforms import PIXEL_MAX, AugmentationSpec, PerImage, train_transforms

SPEC = AugmentationSpec()
P_MIN = 1e-3  # a KS or chi-square p-value below this fails (the draws are seeded, so the tests are deterministic)
DRAWS = 20_000
PIPELINE_DRAWS = 1_000
IMAGE_SIDE = 16
BATCH = 16
SIGMAS = 4  # binomial tolerance of a rate
NOISE_DRAWS, NOISE_SIDE = 2_000, 64


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The MONAI pipeline's small tensors run much faster on one torch thread on shared cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def per_image(transform, images: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.as_tensor(transform(image)) for image in images])


@pytest.mark.parametrize("radius", [1, 2])
def test_median_filter_is_monai_median_smooth(radius):
    generator = torch.Generator().manual_seed(0)
    smooth = torch.rand(3, 3, 11, 14, generator=generator)
    ties = torch.randint(0, 4, (2, 3, 9, 9), generator=generator).float() / 3
    for images in (smooth, ties):
        assert torch.equal(median_filter(images, radius), per_image(mt.MedianSmooth(radius=radius), images))


def test_gaussian_blur_is_monai_gaussian_smooth():
    images = torch.rand(4, 3, 12, 15, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([[0.8, 1.1], [0.86, 0.9], [1.0, 0.81], [1.09, 0.95]])  # kernel tails 3 and 4
    expected = torch.stack([torch.as_tensor(mt.GaussianSmooth(sigma=tuple(s.tolist()))(image))
                            for image, s in zip(images, sigma)])
    torch.testing.assert_close(gaussian_blur(images, sigma), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [(3, 16, 16), (3, 12, 20)])
def test_warp_is_monai_affine(shape):
    images = torch.rand(3, *shape, generator=torch.Generator().manual_seed(2))
    angle = torch.tensor([0.25, -0.2, 0.0])
    shift = torch.tensor([[1.5, -2.0], [0.0, 1.2], [-1.0, 0.3]])
    scale = torch.tensor([[1.1, 0.9], [0.95, 1.04], [1.0, 1.0]])
    expected = torch.stack([
        torch.as_tensor(mt.Affine(rotate_params=a.item(), translate_params=s.tolist(), scale_params=c.tolist(),
                                  padding_mode="zeros")(image)[0])
        for image, a, s, c in zip(images, angle, shift, scale)])
    torch.testing.assert_close(warp(images, angle, shift, scale), expected, rtol=0, atol=1e-5)


def assert_rate(flags: torch.Tensor, prob: float) -> None:
    rate, n = flags.float().mean().item(), flags.numel()
    assert abs(rate - prob) <= SIGMAS * math.sqrt(prob * (1 - prob) / n), f"rate {rate:.4f}, expected {prob}"


def assert_uniform(values: torch.Tensor, low: float, high: float) -> None:
    p = stats.kstest(values.double().numpy().ravel(), stats.uniform(low, high - low).cdf).pvalue
    assert p > P_MIN, f"not U({low}, {high}): KS p = {p:.2g}"


def test_every_parameter_follows_the_specification():
    height, width = 10, 30  # per-axis shift limits differ
    draws = draw(torch.Size((DRAWS, 1, height, width)), SPEC, torch.Generator().manual_seed(3))
    assert_rate(draws.vertical_flip, SPEC.flip_prob)
    assert_rate(draws.horizontal_flip, SPEC.flip_prob)
    assert_rate(draws.brightness != 0, SPEC.brightness_prob)
    assert_uniform(draws.brightness[draws.brightness != 0], -SPEC.brightness_limit, SPEC.brightness_limit)
    counts = torch.bincount(draws.branch, minlength=4).numpy()
    assert stats.chisquare(counts, np.array(SPEC.branch_weights()) * DRAWS).pvalue > P_MIN
    assert (IDENTITY, MEDIAN, GAUSSIAN, NOISE) == (0, 1, 2, 3)
    for axis in (0, 1):
        assert_uniform(draws.sigma[:, axis], *SPEC.blur_sigma)
        assert_uniform(draws.scale[:, axis], 1 - SPEC.scale_limit, 1 + SPEC.scale_limit)
    assert_uniform(draws.shift[:, 0], -SPEC.shift_limit * height, SPEC.shift_limit * height)
    assert_uniform(draws.shift[:, 1], -SPEC.shift_limit * width, SPEC.shift_limit * width)
    assert_rate(draws.affine, SPEC.affine_prob)
    rotate = math.radians(SPEC.rotate_degrees)
    assert_uniform(draws.angle, -rotate, rotate)


def test_noise_is_gaussian_with_a_uniform_std_per_image():
    draws = draw(torch.Size((NOISE_DRAWS, 3, NOISE_SIDE, NOISE_SIDE)), SPEC, torch.Generator().manual_seed(9))
    noise = draws.noise.flatten(1)
    assert len(noise) == (draws.branch == NOISE).sum()
    assert_uniform(noise.std(dim=1), 0.0, SPEC.noise_std)  # the sample std of 12,288 pixels is within 1 %
    unit = noise / noise.std(dim=1, keepdim=True)
    assert stats.kstest(unit[:, ::NOISE_SIDE].flatten().numpy(), stats.norm.cdf).pvalue > P_MIN


def test_draws_are_independent_across_axes_and_images():
    draws = draw(torch.Size((DRAWS, 1, 4, 4)), SPEC, torch.Generator().manual_seed(4))
    for pair in (draws.sigma, draws.shift, draws.scale):
        assert abs(np.corrcoef(pair[:, 0], pair[:, 1])[0, 1]) < SIGMAS / math.sqrt(DRAWS)
    assert abs(np.corrcoef(draws.vertical_flip.float(), draws.horizontal_flip.float())[0, 1]) < SIGMAS / math.sqrt(
        DRAWS)


def probe_image() -> torch.Tensor:
    """A 3-channel image whose statistics each operation moves: a bright off-centre block on a ramp."""
    rows = torch.linspace(0.1, 0.5, IMAGE_SIDE)[:, None].expand(IMAGE_SIDE, IMAGE_SIDE)
    image = torch.stack([rows, rows.T, 0.3 * torch.ones(IMAGE_SIDE, IMAGE_SIDE)]).clone()
    image[:, 2:6, 3:9] = 0.9
    return image


def features(images: torch.Tensor) -> dict[str, np.ndarray]:
    """Per image of the pipeline's output (in [-1, 1]): mean; intensity-weighted row and column centroids;
    roughness; the corner's mean."""
    rows = torch.arange(IMAGE_SIDE, dtype=torch.float32)
    plane = (images.mean(dim=1) + 1) / 2
    total = plane.sum(dim=(1, 2))
    values = {
        "mean": plane.mean(dim=(1, 2)),
        "row centroid": (plane.sum(dim=2) * rows).sum(dim=1) / total,
        "column centroid": (plane.sum(dim=1) * rows).sum(dim=1) / total,
        "roughness": (images[..., 1:] - images[..., :-1]).abs().mean(dim=(1, 2, 3)),
        "corner": plane[:, :3, :3].mean(dim=(1, 2)),
    }
    return {name: value.numpy() for name, value in values.items()}


@pytest.fixture(scope="module")
def monai_features() -> dict[str, np.ndarray]:
    transform = train_transforms(IMAGE_SIDE).set_random_state(5)
    image = probe_image()
    return features(torch.stack([transform(image) for _ in range(PIPELINE_DRAWS)]))


def batched_features(spec: AugmentationSpec) -> dict[str, np.ndarray]:
    transform = batched_train_transforms(spec).set_random_state(6)
    batch = probe_image().expand(BATCH, -1, -1, -1)
    return features(torch.cat([transform(batch) for _ in range(PIPELINE_DRAWS // BATCH)]))


def ks_pvalues(ours: dict, theirs: dict) -> dict[str, float]:
    return {name: stats.ks_2samp(ours[name], theirs[name]).pvalue for name in ours}


def test_batched_pipeline_has_the_per_image_pipelines_pixel_statistics(monai_features):
    pvalues = ks_pvalues(batched_features(SPEC), monai_features)
    assert min(pvalues.values()) > P_MIN, pvalues


@pytest.mark.parametrize("wrong", [dict(flip_prob=0.0), dict(shift_limit=0.2), dict(rotate_degrees=30.0),
                                   dict(scale_limit=0.2), dict(blur_noise_prob=0.0), dict(brightness_prob=0.0),
                                   dict(affine_prob=0.0)],
                         ids=["no flips", "shift range doubled", "rotation range doubled", "scale range doubled",
                              "no blur or noise", "no brightness", "no affine"])
def test_the_statistics_test_fails_a_wrong_distribution(monai_features, wrong):
    pvalues = ks_pvalues(batched_features(replace(SPEC, **wrong)), monai_features)
    assert min(pvalues.values()) < P_MIN, pvalues


def test_seeding_reaches_the_batched_augmentation():
    batch = probe_image().expand(BATCH, -1, -1, -1)
    first, again, other = (BatchAugmentation().set_random_state(seed) for seed in (7, 7, 8))
    assert torch.equal(first(batch), again(batch))
    assert not torch.equal(first(batch), other(batch))


# ------------------------------------------------------------------ the DataLoader path

@pytest.fixture(scope="module")
def federation(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("prrfl_ham10000")
    prepare.prepare_federation(shared_data / "ham10000_mini", out, sources=["rosendahl"], image_size=IMAGE_SIDE,
                               log=lambda message: None)
    return out


def client_settings(federation, **overrides) -> DermoscopySettings:
    return DermoscopySettings(network={"name": "vgg16_slim"}, data_root=str(federation), image_size=IMAGE_SIDE,
                              **overrides)


def decoded(dataset) -> torch.Tensor:
    """Every image of ``dataset`` read with PIL as the per-item path read it: float32 in [0, 1], (N, 3, H, W)."""
    return torch.stack([torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / PIXEL_MAX)
                        .permute(2, 0, 1) for path, _ in dataset.samples])


def loader_images(dataset, batch_size: int = 5) -> torch.Tensor:
    return torch.cat([batch["image"] for batch in DataLoader(dataset, batch_size=batch_size)])


@pytest.mark.parametrize("augmentation", ["batched", "per_image"])
def test_without_augmentation_the_loader_feeds_the_decoded_images(federation, augmentation):
    datasets = build_client_datasets(client_settings(federation, augment=False, augmentation=augmentation), "clientA")
    for dataset in datasets.values():
        expected = decoded(dataset) * 2 - 1
        assert torch.equal(loader_images(dataset), expected)
        assert torch.equal(loader_images(dataset), expected)  # and again from the decoded cache


def test_per_image_is_the_per_sample_monai_stream(federation):
    dataset = build_client_datasets(client_settings(federation, augmentation="per_image"), "clientA")["training"]
    assert isinstance(dataset.transform, PerImage)
    seed_random_transforms({"training": dataset}, 1)
    reference = train_transforms(IMAGE_SIDE).set_random_state(1)
    assert torch.equal(loader_images(dataset), per_image(reference, decoded(dataset)))


def test_batched_is_the_default_and_seeded_by_the_executor(federation):
    dataset = build_client_datasets(client_settings(federation), "clientA")["training"]
    runs = []
    for seed in (1, 1, 2):
        seed_random_transforms({"training": dataset}, seed)
        runs.append(loader_images(dataset, BATCH))
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    assert runs[0].shape == (len(dataset), 3, IMAGE_SIDE, IMAGE_SIDE) and runs[0].abs().max() <= 1
