"""MoCo v2 (He et al., CVPR 2020; Chen et al., arXiv 2003.04297) for building a FedMAS prior (§3.3).

``MoCoV2`` has the official module names, so ``{"module." + k: v for k, v in model.state_dict().items()}`` is
the official checkpoint's ``state_dict`` (``module.encoder_q.*``, ``module.encoder_k.*``, ``module.queue``,
``module.queue_ptr``) and loads with ``medfl.fedmas.prior.load_moco_prior``.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from medfl.common.resnet import resnet_trunk, trunk_features
from medfl.federations.isic2019.data import IMAGENET_MEAN, IMAGENET_STD, gaussian_blur

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
    """

    def __init__(
        self,
        depth: int = 50,
        dim: int = EMBED_DIM,
        queue_size: int = QUEUE_SIZE,
        momentum: float = KEY_MOMENTUM,
        temperature: float = TEMPERATURE,
        bn_splits: int = BN_SPLITS,
    ) -> None:
        super().__init__()
        self.momentum = momentum
        self.temperature = temperature
        self.bn_splits = bn_splits
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
        index = (self.queue_ptr + torch.arange(keys.shape[0], device=keys.device)) % size
        self.queue[:, index] = keys.T
        self.queue_ptr[0] = (self.queue_ptr[0] + keys.shape[0]) % size

    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor) -> torch.Tensor:
        q = self._encode(self.encoder_q, im_q)
        with torch.no_grad():
            self._momentum_update()
            order = torch.randperm(im_k.shape[0], device=im_k.device)
            k = torch.empty_like(q)
            k[order] = self._encode(self.encoder_k, im_k[order])
        positive = (q * k).sum(dim=1, keepdim=True)
        negative = q @ self.queue.clone()
        logits = torch.cat([positive, negative], dim=1) / self.temperature
        loss = F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))
        self._enqueue(k)
        return loss


def _grey(image: torch.Tensor) -> torch.Tensor:
    return torch.einsum("c,chw->hw", torch.tensor(LUMA, dtype=image.dtype), image)[None]


def _hue_rotation(angle: float) -> torch.Tensor:
    """Rotation of RGB space about the grey axis (1, 1, 1) by ``angle`` radians (Rodrigues' formula)."""
    axis = torch.full((3,), 1 / math.sqrt(3))
    cross = torch.tensor([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    return math.cos(angle) * torch.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * torch.outer(axis, axis)


class MoCoV2Augment:
    """MoCo v2 view: random resized crop, colour jitter, greyscale, Gaussian blur, horizontal flip, normalise.

    (3, H, W) image in [0, 1] -> (3, S, S) normalised with ImageNet mean/std. Uses torch's global RNG.
    Colour jitter applies brightness, contrast, saturation, hue in that fixed order (torchvision: random
    order); hue is a rotation about the grey axis rather than an HSV shift.
    """

    def __init__(self, image_size: int) -> None:
        self.image_size = image_size
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    @staticmethod
    def _uniform(low: float, high: float) -> float:
        return low + (high - low) * torch.rand(()).item()

    def _crop_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        for _ in range(CROP_ATTEMPTS):
            area = height * width * self._uniform(*CROP_SCALE)
            ratio = math.exp(self._uniform(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])))
            w, h = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(height - h + 1, ()).item())
                left = int(torch.randint(width - w + 1, ()).item())
                return top, left, h, w
        return 0, 0, height, width

    def _jitter(self, image: torch.Tensor) -> torch.Tensor:
        brightness, contrast, saturation, hue = JITTER_STRENGTH
        image = (image * self._uniform(1 - brightness, 1 + brightness)).clamp(0, 1)
        mean = _grey(image).mean()
        image = ((image - mean) * self._uniform(1 - contrast, 1 + contrast) + mean).clamp(0, 1)
        grey = _grey(image)
        image = ((image - grey) * self._uniform(1 - saturation, 1 + saturation) + grey).clamp(0, 1)
        rotation = _hue_rotation(2 * math.pi * self._uniform(-hue, hue))
        return torch.einsum("ij,jhw->ihw", rotation, image).clamp(0, 1)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        top, left, h, w = self._crop_box(image.shape[1], image.shape[2])
        crop = image[:, top : top + h, left : left + w]
        view = F.interpolate(
            crop[None], size=(self.image_size, self.image_size), mode="bilinear", antialias=True, align_corners=False
        )[0]
        if torch.rand(()) < JITTER_PROB:
            view = self._jitter(view)
        if torch.rand(()) < GRAYSCALE_PROB:
            view = _grey(view).expand(3, -1, -1)
        if torch.rand(()) < BLUR_PROB:
            sigma = self._uniform(*BLUR_SIGMA)
            size = 2 * min(math.ceil(BLUR_TRUNCATE * sigma), self.image_size - 1) + 1
            view = gaussian_blur(view, sigma, (size, size))
        if torch.rand(()) < FLIP_PROB:
            view = view.flip(-1)
        return (view - self.mean) / self.std
