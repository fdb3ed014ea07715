"""MoCo-v2 views for a whole batch (medfl.fedmas.moco): the same draws and operations as the per-image views."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from medfl.federations.isic2019.data import gaussian_blur
from medfl.fedmas import moco


def test_batch_views_of_one_image_equal_the_per_image_views_with_the_same_seed():
    image = torch.rand(3, 32, 32)
    for seed in range(5):
        torch.manual_seed(seed)
        single = moco.MoCoV2Augment(32, blur_sigma=(0.5, 1.5))(image)
        torch.manual_seed(seed)
        batch = moco.MoCoV2BatchAugment(32, blur_sigma=(0.5, 1.5))(image[None])
        assert torch.allclose(batch[0], single, atol=1e-5), seed


def test_each_view_of_a_batch_gets_its_own_draws():
    torch.manual_seed(0)
    views = torch.rand(6, 3, 16, 16)
    draws = moco.draw_view_colours(6, blur_sigma=(0.3, 2.0))
    together = moco.apply_view_colours(views, draws)
    for i in range(6):
        alone = moco.ViewColours(**{f.name: getattr(draws, f.name)[i : i + 1] for f in dataclasses.fields(draws)})
        assert torch.allclose(together[i], moco.apply_view_colours(views[i : i + 1], alone)[0], atol=1e-6), i


def test_crop_resize_samples_as_bilinear_interpolation_of_the_crop():
    images = torch.rand(3, 3, 20, 24)
    boxes = torch.tensor([[0, 0, 20, 24], [3, 5, 9, 14], [11, 2, 9, 20]])
    resized = moco.crop_resize(images, boxes, 24)
    for image, view, (top, left, h, w) in zip(images, resized, boxes.tolist()):
        expected = F.interpolate(image[None, :, top : top + h, left : left + w], size=(24, 24), mode="bilinear",
                                 align_corners=False)[0]
        assert torch.allclose(view, expected, atol=1e-5)


def test_per_view_blur_is_the_per_image_truncated_gaussian():
    views = torch.rand(3, 3, 16, 16)
    sigma = torch.tensor([0.0, 0.6, 7.0])  # none, radius 2, radius capped at 15
    blurred = moco._blur(views, sigma)
    assert torch.equal(blurred[0], views[0])
    for i in (1, 2):
        size = 2 * min(math.ceil(moco.BLUR_TRUNCATE * sigma[i].item()), 15) + 1
        assert torch.allclose(blurred[i], gaussian_blur(views[i], sigma[i].item(), (size, size)), atol=1e-5)


def test_crop_boxes_lie_inside_the_image_with_the_drawn_area():
    torch.manual_seed(0)
    boxes = moco.draw_crop_boxes(2000, 30, 40, scale=(0.2, 1.0))
    top, left, h, w = boxes.unbind(dim=1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 30).all() and (left + w <= 40).all()
    area = (h * w).float() / (30 * 40)
    assert area.min() > 0.15 and area.max() <= 1.0
    assert 0.5 < area.mean() < 0.65  # U(0.2, 1) has mean 0.6; rounding and retries move it a little
    ratio = (w / h).float()
    assert ratio.min() > 0.6 and ratio.max() < 1.45


def test_batch_views_have_the_view_size_and_the_imagenet_normalisation():
    torch.manual_seed(0)
    views = moco.MoCoV2BatchAugment(24)(torch.full((8, 3, 24, 24), 0.5))
    assert views.shape == (8, 3, 24, 24) and torch.isfinite(views).all()
    with pytest.raises(ValueError, match="crop_scale"):
        moco.MoCoV2BatchAugment(24, crop_scale=(0.5, 1.5))
