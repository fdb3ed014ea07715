"""MoCo v2 (He et al., CVPR 2020; Chen et al., arXiv 2003.04297) for building a FedMAS prior (§3.3).

``MoCoV2`` has the official module names, so ``{"module." + k: v for k, v in model.state_dict().items()}`` is
the official checkpoint's ``state_dict`` (``module.encoder_q.*``, ``module.encoder_k.*``, ``module.queue``,
``module.queue_ptr``) and loads with ``medfl.fedmas.prior.load_moco_prior``.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from medfl.common.resnet import resnet_trunk, trunk_features
from medfl.federations.isic2019.data import IMAGENET_MEAN, IMAGENET_STD

# MoCo v2 defaults (official main_moco.py with --mlp --moco-t 0.2 --aug-plus --cos)
EMBED_DIM = 128
QUEUE_SIZE = 65536
KEY_MOMENTUM = 0.999
TEMPERATURE = 0.2
BN_SPLITS = 8  # the official run shuffles BN over 8 GPUs; here the batch is split into 8 BN groups

# MoCo v2 "aug-plus" augmentation
CROP_SCALE = (0.2, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
CROP_ATTEMPTS = 10
JITTER_PROB = 0.8
JITTER_STRENGTH = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
GRAYSCALE_PROB = 0.2
BLUR_PROB = 0.5
BLUR_SIGMA = (0.1, 2.0)
BLUR_TRUNCATE = 3.0  # kernel radius in sigmas
FLIP_PROB = 0.5
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 grey, as torchvision's rgb_to_grayscale


def moco_encoder(depth: int, dim: int = EMBED_DIM) -> nn.Module:
    """ResNet trunk with the MoCo v2 MLP head ``fc = Linear(F, F) - ReLU - Linear(F, dim)``.

    (B, 3, H, W) -> (B, dim).
    """
    encoder = resnet_trunk(depth)
    features = trunk_features(depth)
    encoder.fc = nn.Sequential(nn.Linear(features, features), nn.ReLU(), nn.Linear(features, dim))
    return encoder


class MoCoV2(nn.Module):
    """Query encoder, momentum key encoder and a queue of negative keys; ``forward`` returns the InfoNCE loss.

    ``forward(im_q, im_k)`` with two augmented views (B, 3, H, W): q = normalize(f_q(im_q)), k = normalize(f_k(im_k)),
    logits = [q.k, q.queue] / T, loss = CE(logits, 0); then k is enqueued. BatchNorm sees ``bn_splits`` groups
    of the batch, the key encoder a shuffled batch (single-process "shuffle BN"), so that BN statistics cannot
    leak which key is the positive.

    ``symmetric=True`` (not in MoCo v2; the symmetrised loss of the official MoCo CIFAR-10 demo and MoCo v3) also
    queries with ``im_k`` against the key of ``im_q``: the loss is the mean of both directions and both keys are
    enqueued, so every pair of views gives two training signals for one extra forward-backward pass.
    """

    def __init__(
        self,
        depth: int = 50,
        dim: int = EMBED_DIM,
        queue_size: int = QUEUE_SIZE,
        momentum: float = KEY_MOMENTUM,
        temperature: float = TEMPERATURE,
        bn_splits: int = BN_SPLITS,
        symmetric: bool = False,
    ) -> None:
        super().__init__()
        self.momentum = momentum
        self.temperature = temperature
        self.bn_splits = bn_splits
        self.symmetric = symmetric
        self.encoder_q = moco_encoder(depth, dim)
        self.encoder_k = copy.deepcopy(self.encoder_q).requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(dim, queue_size), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    def _encode(self, encoder: nn.Module, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(torch.cat([encoder(part) for part in images.chunk(self.bn_splits)]), dim=1)

    @torch.no_grad()
    def _momentum_update(self) -> None:
        for param_k, param_q in zip(self.encoder_k.parameters(), self.encoder_q.parameters()):
            param_k.mul_(self.momentum).add_(param_q.detach(), alpha=1 - self.momentum)

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        size = self.queue.shape[1]
        if keys.shape[0] > size:
            raise ValueError(f"{keys.shape[0]} keys per step do not fit a queue of {size}: use a larger queue")
        index = (self.queue_ptr + torch.arange(keys.shape[0], device=keys.device)) % size
        self.queue[:, index] = keys.T
        self.queue_ptr[0] = (self.queue_ptr[0] + keys.shape[0]) % size

    @torch.no_grad()
    def _keys(self, images: torch.Tensor) -> torch.Tensor:
        """Keys of the momentum encoder, computed on a shuffled batch and returned in the batch's order."""
        order = torch.randperm(images.shape[0], device=images.device)
        keys = torch.empty(images.shape[0], self.queue.shape[0], dtype=images.dtype, device=images.device)
        keys[order] = self._encode(self.encoder_k, images[order])
        return keys

    def _info_nce(self, q: torch.Tensor, k: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        positive = (q * k).sum(dim=1, keepdim=True)
        logits = torch.cat([positive, q @ negatives], dim=1) / self.temperature
        return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))

    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self._momentum_update()
        negatives = self.queue.clone()
        k = self._keys(im_k)
        loss = self._info_nce(self._encode(self.encoder_q, im_q), k, negatives)
        if self.symmetric:
            k_of_q = self._keys(im_q)
            loss = (loss + self._info_nce(self._encode(self.encoder_q, im_k), k_of_q, negatives)) / 2
            k = torch.cat([k, k_of_q])
        self._enqueue(k)
        return loss


def _grey(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma."""
    return torch.einsum("c,bchw->bhw", torch.tensor(LUMA, dtype=images.dtype), images)[:, None]


def _hue_rotations(angles: torch.Tensor) -> torch.Tensor:
    """Rotations of RGB space about the grey axis (1, 1, 1) by ``angles`` (B,) radians (Rodrigues' formula):
    (B, 3, 3)."""
    axis = torch.full((3,), 1 / math.sqrt(3))
    cross = torch.tensor([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    cos, sin = angles.cos().view(-1, 1, 1), angles.sin().view(-1, 1, 1)
    return cos * torch.eye(3) + sin * cross + (1 - cos) * torch.outer(axis, axis)


def _uniform(count: int, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(count)


def draw_crop_boxes(count: int, height: int, width: int, scale: tuple[float, float] = CROP_SCALE) -> torch.Tensor:
    """``count`` random-resized-crop boxes (top, left, h, w) of an ``height`` x ``width`` image: (count, 4) long.

    As torchvision's ``RandomResizedCrop.get_params``: up to 10 tries of an area fraction ~ U(scale) and a log-uniform
    aspect ratio in [3/4, 4/3]; the first box that fits is kept, else the whole image. Uses torch's global RNG.
    """
    area = height * width * _uniform(count * CROP_ATTEMPTS, *scale).view(count, CROP_ATTEMPTS)
    ratio = torch.exp(_uniform(count * CROP_ATTEMPTS, math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])))
    ratio = ratio.view(count, CROP_ATTEMPTS)
    w, h = torch.round(torch.sqrt(area * ratio)).long(), torch.round(torch.sqrt(area / ratio)).long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.long().argmax(dim=1, keepdim=True)
    found = fits.any(dim=1)
    h = torch.where(found, h.gather(1, first)[:, 0], torch.tensor(height))
    w = torch.where(found, w.gather(1, first)[:, 0], torch.tensor(width))
    top = (torch.rand(count) * (height - h + 1)).long()
    left = (torch.rand(count) * (width - w + 1)).long()
    return torch.stack([top, left, h, w], dim=1)


def crop_resize(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of each box (top, left, h, w) of ``images`` (B, C, H, W) to ``size`` x ``size``: (B, C, S, S).

    The sampling positions are ``F.interpolate(mode="bilinear", align_corners=False)``'s on the cropped image, with
    its clamping at the borders; there is no anti-aliasing, so use it to enlarge (crops of an image of side S).
    """
    height, width = images.shape[-2:]
    top, left, h, w = boxes.to(images.dtype).unbind(dim=1)
    steps = (torch.arange(size, dtype=images.dtype) + 0.5) / size  # output pixel centres in [0, 1]
    rows = torch.minimum((steps * h[:, None] - 0.5).clamp(min=0), h[:, None] - 1)  # in pixels of the crop
    cols = torch.minimum((steps * w[:, None] - 0.5).clamp(min=0), w[:, None] - 1)
    rows = (top[:, None] + rows + 0.5) / height * 2 - 1  # grid_sample's coordinates of the image
    cols = (left[:, None] + cols + 0.5) / width * 2 - 1
    grid = torch.stack(torch.broadcast_tensors(cols[:, None, :], rows[:, :, None]), dim=-1)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


@dataclasses.dataclass
class ViewColours:
    """The random colour and geometry draws of a batch of views, one entry per view (each (B,))."""

    jitter: torch.Tensor  # bool: colour jitter applied
    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor  # rotation angle in radians
    grey: torch.Tensor  # bool
    blur_sigma: torch.Tensor  # 0: no blur
    flip: torch.Tensor  # bool


def draw_view_colours(count: int, blur_sigma: tuple[float, float] = BLUR_SIGMA) -> ViewColours:
    """MoCo v2's per-view draws: jitter with p 0.8 (factors ~ U(1 -+ 0.4), hue ~ U(-+0.1) turns), greyscale with
    p 0.2, blur with p 0.5 and sigma ~ U(blur_sigma), horizontal flip with p 0.5. Uses torch's global RNG."""
    brightness, contrast, saturation, hue = JITTER_STRENGTH
    blur = torch.rand(count) < BLUR_PROB
    return ViewColours(
        jitter=torch.rand(count) < JITTER_PROB,
        brightness=_uniform(count, 1 - brightness, 1 + brightness),
        contrast=_uniform(count, 1 - contrast, 1 + contrast),
        saturation=_uniform(count, 1 - saturation, 1 + saturation),
        hue=2 * math.pi * _uniform(count, -hue, hue),
        grey=torch.rand(count) < GRAYSCALE_PROB,
        blur_sigma=torch.where(blur, _uniform(count, *blur_sigma), torch.tensor(0.0)),
        flip=torch.rand(count) < FLIP_PROB,
    )


def _blur(views: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-view Gaussian blur of (B, C, S, S), radius min(ceil(3 sigma), S - 1), reflect padding; sigma 0: none."""
    batch, channels, size, _ = views.shape
    radius = torch.clamp(torch.ceil(BLUR_TRUNCATE * sigma), max=size - 1).long()
    if not radius.any():
        return views
    reach = int(radius.max())
    offsets = torch.arange(-reach, reach + 1, dtype=views.dtype)
    weights = torch.exp(-0.5 * (offsets / sigma.clamp(min=1e-12)[:, None]) ** 2)
    weights = torch.where(offsets.abs() <= radius[:, None], weights, torch.zeros(()))
    weights = torch.where((sigma > 0)[:, None], weights, (offsets == 0).to(views.dtype))
    weights = (weights / weights.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)
    padded = F.pad(views.reshape(1, batch * channels, size, size), (reach,) * 4, mode="reflect")
    padded = F.conv2d(padded, weights.view(-1, 1, 1, 2 * reach + 1), groups=batch * channels)
    padded = F.conv2d(padded, weights.view(-1, 1, 2 * reach + 1, 1), groups=batch * channels)
    return padded.view(batch, channels, size, size)


def apply_view_colours(views: torch.Tensor, draws: ViewColours) -> torch.Tensor:
    """Colour jitter (brightness, contrast, saturation, hue, in that order), greyscale, blur and flip of ``views``
    (B, 3, S, S) in [0, 1], each view with its own draws: (B, 3, S, S) in [0, 1]."""
    jitter = draws.jitter.view(-1, 1, 1, 1)
    x = torch.where(jitter, (views * draws.brightness.view(-1, 1, 1, 1)).clamp(0, 1), views)
    mean = _grey(x).mean(dim=(2, 3), keepdim=True)
    x = torch.where(jitter, ((x - mean) * draws.contrast.view(-1, 1, 1, 1) + mean).clamp(0, 1), x)
    grey = _grey(x)
    x = torch.where(jitter, ((x - grey) * draws.saturation.view(-1, 1, 1, 1) + grey).clamp(0, 1), x)
    rotated = torch.einsum("bij,bjhw->bihw", _hue_rotations(draws.hue), x).clamp(0, 1)
    x = torch.where(jitter, rotated, x)
    x = torch.where(draws.grey.view(-1, 1, 1, 1), _grey(x).expand_as(x), x)
    x = _blur(x, draws.blur_sigma)
    return torch.where(draws.flip.view(-1, 1, 1, 1), x.flip(-1), x)


def _check_settings(crop_scale: tuple[float, float], blur_sigma: tuple[float, float]) -> None:
    if not 0 < crop_scale[0] <= crop_scale[1] <= 1:
        raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {crop_scale}")
    if not 0 < blur_sigma[0] <= blur_sigma[1]:
        raise ValueError(f"blur_sigma must satisfy 0 < low <= high, got {blur_sigma}")


def _imagenet_normalise(views: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, dtype=views.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=views.dtype).view(1, 3, 1, 1)
    return (views - mean) / std


class MoCoV2Augment:
    """MoCo v2 view: random resized crop, colour jitter, greyscale, Gaussian blur, horizontal flip, normalise.

    (3, H, W) image in [0, 1] -> (3, S, S) normalised with ImageNet mean/std. Uses torch's global RNG.
    Colour jitter applies brightness, contrast, saturation, hue in that fixed order (torchvision: random
    order); hue is a rotation about the grey axis rather than an HSV shift. ``crop_scale`` (area fraction of
    the crop) and ``blur_sigma`` (pixels of the S x S view) default to the official values. The crop is resized
    with anti-aliasing, so any image size works; :class:`MoCoV2BatchAugment` makes the same views for a batch.
    """

    def __init__(
        self,
        image_size: int,
        crop_scale: tuple[float, float] = CROP_SCALE,
        blur_sigma: tuple[float, float] = BLUR_SIGMA,
    ) -> None:
        _check_settings(crop_scale, blur_sigma)
        self.image_size = image_size
        self.crop_scale = crop_scale
        self.blur_sigma = blur_sigma

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        top, left, h, w = draw_crop_boxes(1, image.shape[1], image.shape[2], self.crop_scale)[0].tolist()
        crop = image[None, :, top : top + h, left : left + w]
        size = (self.image_size, self.image_size)
        view = F.interpolate(crop, size=size, mode="bilinear", antialias=True, align_corners=False)
        return _imagenet_normalise(apply_view_colours(view, draw_view_colours(1, self.blur_sigma)))[0]


class MoCoV2BatchAugment:
    """:class:`MoCoV2Augment` for a whole batch at once: (B, 3, H, W) in [0, 1] -> (B, 3, S, S), every view with its
    own draws (the same distributions: :func:`draw_crop_boxes`, :func:`draw_view_colours`). The crops are resized
    by :func:`crop_resize`, without anti-aliasing, so it suits images no larger than the views (S >= H, W)."""

    def __init__(
        self,
        image_size: int,
        crop_scale: tuple[float, float] = CROP_SCALE,
        blur_sigma: tuple[float, float] = BLUR_SIGMA,
    ) -> None:
        _check_settings(crop_scale, blur_sigma)
        self.image_size = image_size
        self.crop_scale = crop_scale
        self.blur_sigma = blur_sigma

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        boxes = draw_crop_boxes(images.shape[0], images.shape[2], images.shape[3], self.crop_scale)
        views = crop_resize(images, boxes, self.image_size)
        return _imagenet_normalise(apply_view_colours(views, draw_view_colours(images.shape[0], self.blur_sigma)))
