"""Pre-train a MoCo-v2 prior for FedMAS on a folder of unlabelled images.

Writes a checkpoint in the official ``moco_v2_800ep_pretrain.pth.tar`` format (``epoch``, ``arch``,
``state_dict`` with ``module.encoder_q.*`` / ``module.encoder_k.*`` / ``module.queue*``, ``optimizer``),
atomically after every epoch, so that ``medfl.fedmas.prior.load_moco_prior`` reads it. Every client of a
federation must use the same prior file (see docs/fedmas.md).

Example (the demo prior of docs/fedmas.md, CPU, seconds):
    python data_preparation/pretrain_moco.py --images ../shared/data/ham10000_mini/images \\
        --output data_preparation/demo_isic2019/pretrained/moco_r18.pth.tar --depth 18 --image-size 32 \\
        --epochs 1 --batch-size 32 --queue-size 256 --max-images 128

``--datalists`` restricts the images to those a federation trains on (pooled over its clients), e.g. the
training CSVs of the dermoscopy federation (their ``image`` column is relative to ``--images``):
    python data_preparation/pretrain_moco.py --images $DATASET_ROOT/prrfl_ham10000 \\
        --datalists $DATASET_ROOT/prrfl_ham10000/client*/train_client*.csv --output ... --depth 18 \\
        --image-size 32 --preset small_images --time-budget 60

``--preset`` picks the settings that the other options then override: ``moco_v2`` (default) is the official
MoCo-v2 recipe for ImageNet (200 epochs of 1.28 M images, batch 256, queue 65,536, key momentum 0.999);
``small_images`` is this project's recipe for a few thousand images of 32-64 px and a CPU budget of an hour
(:data:`SMALL_IMAGES`, docs/fedmas.md). ``--time-budget`` (minutes) runs the learning-rate schedule on the
elapsed time when that is further along than the step count, and stops when the time is up, so the schedule ends
within the budget whatever the machine's load.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from medfl.common.errors import DataError
from medfl.common.io import atomic_torch_save
from medfl.federations.isic2019.data import PIXEL_MAX, load_rgb
from medfl.fedmas.moco import (
    BLUR_SIGMA,
    BN_SPLITS,
    CROP_SCALE,
    EMBED_DIM,
    KEY_MOMENTUM,
    QUEUE_SIZE,
    TEMPERATURE,
    MoCoV2,
    MoCoV2Augment,
    MoCoV2BatchAugment,
)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
SGD_MOMENTUM = 0.9
DEPTH = 50
IMAGE_SIZE = 224
OFFICIAL_VIEW_SIZE = 224  # the official blur sigmas are pixels of a 224 x 224 view
SECONDS_PER_MINUTE = 60.0


@dataclasses.dataclass(frozen=True)
class Recipe:
    """MoCo-v2 optimisation and augmentation settings. ``warmup_fraction`` of the schedule raises the learning
    rate linearly from 0; the rest is a cosine decay to 0 (MoCo v2's ``--cos``). ``blur_sigma`` is in pixels of the
    view, ``crop_scale`` the crop's area fraction."""

    epochs: int
    batch_size: int
    lr: float
    warmup_fraction: float
    weight_decay: float
    queue_size: int
    key_momentum: float
    temperature: float
    bn_splits: int
    symmetric: bool
    crop_scale: tuple[float, float]
    blur_sigma: tuple[float, float]


def moco_v2_recipe(image_size: int) -> Recipe:
    """The official MoCo v2 run (main_moco.py --mlp --moco-t 0.2 --aug-plus --cos): SGD lr 0.03 for batch 256,
    momentum 0.9, weight decay 1e-4, 200 epochs, queue 65,536, key momentum 0.999, 8 shuffled BN groups."""
    return Recipe(epochs=200, batch_size=256, lr=0.03, warmup_fraction=0.0, weight_decay=1e-4,
                  queue_size=QUEUE_SIZE, key_momentum=KEY_MOMENTUM, temperature=TEMPERATURE, bn_splits=BN_SPLITS,
                  symmetric=False, crop_scale=CROP_SCALE, blur_sigma=BLUR_SIGMA)


def small_images_recipe(image_size: int) -> Recipe:
    """MoCo v2 for a few thousand images of 32-64 px in about an hour of CPU (docs/fedmas.md, "FedMAS prior" in
    docs/RESULTS.md): a fast key encoder (momentum 0.99) and a queue shorter than an epoch, so that the keys are
    recent; temperature 0.1, lr 0.06 after a 5 % warm-up and weight decay 5e-4 (the official MoCo CIFAR-10 demo's);
    4 shuffled BN groups of 64; the blur scaled to the view (sigma 0.1-2 px of 224 px)."""
    scale = image_size / OFFICIAL_VIEW_SIZE
    return Recipe(epochs=200, batch_size=256, lr=0.06, warmup_fraction=0.05, weight_decay=5e-4, queue_size=4096,
                  key_momentum=0.99, temperature=0.1, bn_splits=4, symmetric=False, crop_scale=CROP_SCALE,
                  blur_sigma=(BLUR_SIGMA[0] * scale, BLUR_SIGMA[1] * scale))


PRESETS: dict[str, Callable[[int], Recipe]] = {"moco_v2": moco_v2_recipe, "small_images": small_images_recipe}
DEFAULT_PRESET = "moco_v2"


def learning_rate(base: float, progress: float, warmup_fraction: float) -> float:
    """Linear warm-up over the first ``warmup_fraction`` of the schedule, then cosine decay to 0 at
    ``progress`` = 1 (``progress`` in [0, 1] is the fraction of the schedule done)."""
    progress = min(max(progress, 0.0), 1.0)
    if progress < warmup_fraction:
        return base * progress / warmup_fraction
    decay = (progress - warmup_fraction) / (1 - warmup_fraction)
    return base * 0.5 * (1 + math.cos(math.pi * decay))


def schedule_progress(step: int, total_steps: int, elapsed_s: float, budget_s: float) -> float:
    """Fraction of the schedule done after ``step`` of ``total_steps`` steps and ``elapsed_s`` seconds: the
    larger of the step and time fractions (no time limit when ``budget_s`` <= 0)."""
    progress = step / total_steps
    return max(progress, elapsed_s / budget_s) if budget_s > 0 else progress


def listed_images(folder: Path, datalists: Sequence[Path]) -> list[Path]:
    """The files named in the ``image`` column of the ``datalists`` CSVs, relative to ``folder``."""
    files = []
    for datalist in datalists:
        with open(datalist, newline="") as stream:
            reader = csv.DictReader(stream)
            if "image" not in (reader.fieldnames or []):
                raise ValueError(f"{datalist}: no 'image' column (has {reader.fieldnames})")
            files.extend(folder / row["image"] for row in reader)
    return files


def image_files(folder: Path, max_images: int = 0, datalists: Sequence[Path] = ()) -> list[Path]:
    """Every image file under ``folder`` (recursively), or only those listed in ``datalists``, in name order; the
    first ``max_images`` if > 0."""
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    if datalists:
        files = sorted(listed_images(folder, datalists))
    else:
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if max_images > 0:
        files = files[:max_images]
    if not files:
        raise ValueError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    return files


class TwoViews(Dataset):
    """The images of :func:`image_files` -> two independently augmented views, decoded and augmented per image."""

    def __init__(self, folder: Path, augment: MoCoV2Augment, max_images: int = 0,
                 datalists: Sequence[Path] = ()) -> None:
        self.files = image_files(folder, max_images, datalists)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = load_rgb(self.files[index])
        return self.augment(image), self.augment(image)


def decode_images(files: Sequence[Path]) -> torch.Tensor:
    """Every file decoded once: (N, 3, H, W) uint8. All images must have the size of the first."""
    images = []
    for path in files:
        image = torch.round(load_rgb(path) * PIXEL_MAX).to(torch.uint8)
        if images and image.shape != images[0].shape:
            raise DataError(f"is {tuple(image.shape[1:])} pixels, the first image {tuple(images[0].shape[1:])}: "
                            f"--in-memory needs images of one size", path=path)
        images.append(image)
    return torch.stack(images)


def batched_view_pairs(images: torch.Tensor, batch_size: int,
                       augment: MoCoV2BatchAugment) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of ``images`` (N, 3, H, W) uint8 in random order, as batches of two augmented views; the last
    partial batch is dropped."""
    order = torch.randperm(images.shape[0])
    for index in order[: len(order) - len(order) % batch_size].split(batch_size):
        batch = images[index].float() / PIXEL_MAX
        yield augment(batch), augment(batch)


RECIPE_OPTIONS = {  # option -> (Recipe field, type, nargs, help); unset options keep the preset's value
    "--epochs": ("epochs", int, None, "epochs (an upper bound with --time-budget)"),
    "--batch-size": ("batch_size", int, None, "pairs of views per step"),
    "--lr": ("lr", float, None, "peak learning rate (warm-up, then cosine decay)"),
    "--warmup-fraction": ("warmup_fraction", float, None, "fraction of the schedule with a linear warm-up"),
    "--weight-decay": ("weight_decay", float, None, "SGD weight decay"),
    "--queue-size": ("queue_size", int, None, "number of negative keys"),
    "--key-momentum": ("key_momentum", float, None, "momentum of the key encoder"),
    "--temperature": ("temperature", float, None, "InfoNCE temperature"),
    "--bn-splits": ("bn_splits", int, None, "BatchNorm groups per batch (shuffle BN)"),
    "--crop-scale": ("crop_scale", float, 2, "area fraction range of the random crops"),
    "--blur-sigma": ("blur_sigma", float, 2, "Gaussian blur sigma range, in pixels of the view"),
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, required=True, help="folder of unlabelled images (searched recursively)")
    parser.add_argument("--datalists", type=Path, nargs="+", default=[],
                        help="only the images in these CSVs' 'image' column (paths relative to --images)")
    parser.add_argument("--output", type=Path, required=True, help="checkpoint file to write")
    parser.add_argument("--max-images", type=int, default=0, help="use only the first N images (0: all)")
    parser.add_argument("--depth", type=int, default=DEPTH, choices=(18, 34, 50), help="ResNet depth")
    parser.add_argument("--image-size", type=int, default=IMAGE_SIZE, help="side of the square crops")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=DEFAULT_PRESET,
                        help="settings that the options below override (default: the official MoCo v2)")
    for option, (_, kind, nargs, text) in RECIPE_OPTIONS.items():
        parser.add_argument(option, type=kind, nargs=nargs, default=None, help=text)
    parser.add_argument("--symmetric", action=argparse.BooleanOptionalAction, default=None,
                        help="symmetrised loss (both views query)")
    parser.add_argument("--dim", type=int, default=EMBED_DIM, help="embedding width of the MLP head")
    parser.add_argument("--time-budget", type=float, default=0.0,
                        help="minutes: the schedule follows the elapsed time when it is ahead, and training stops "
                             "when the time is up (0: no limit)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--in-memory", action="store_true",
                        help="decode every image once and augment whole batches (images of one size, e.g. a "
                             "prepared federation's; much faster for small images)")
    parser.add_argument("--workers", type=int, default=0, help="data-loader worker processes (not with --in-memory)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args(argv)


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    """The preset's recipe at ``args.image_size`` with every option that was given replacing its value."""
    given = {field: getattr(args, option[2:].replace("-", "_")) for option, (field, *_) in RECIPE_OPTIONS.items()}
    given["symmetric"] = args.symmetric
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items() if v is not None}
    recipe = dataclasses.replace(PRESETS[args.preset](args.image_size), **given)
    steps_per_batch = 2 if recipe.symmetric else 1
    if recipe.batch_size * steps_per_batch > recipe.queue_size:
        raise ValueError(f"--queue-size {recipe.queue_size} is smaller than the {recipe.batch_size * steps_per_batch} "
                         f"keys enqueued per step")
    if not 0 <= recipe.warmup_fraction < 1:
        raise ValueError(f"--warmup-fraction must be in [0, 1), got {recipe.warmup_fraction}")
    return recipe


def checkpoint_content(model: MoCoV2, optimizer: torch.optim.Optimizer, epoch: int, depth: int, recipe: Recipe,
                       history: list[dict]) -> dict:
    """The official checkpoint format, plus this run's ``recipe`` and per-epoch ``history``."""
    return {
        "epoch": epoch,
        "arch": f"resnet{depth}",
        "state_dict": {f"module.{k}": v.cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "recipe": dataclasses.asdict(recipe),
        "history": history,
    }


def main(argv: Sequence[str] | None = None) -> Path:
    args = parse_args(argv)
    recipe = recipe_from_args(args)
    torch.manual_seed(args.seed)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    files = image_files(args.images, args.max_images, args.datalists)
    if len(files) < recipe.batch_size:
        raise ValueError(f"{args.images}: {len(files)} images, fewer than --batch-size {recipe.batch_size}")
    if args.in_memory:
        images = decode_images(files)
        augment = MoCoV2BatchAugment(args.image_size, recipe.crop_scale, recipe.blur_sigma)
        steps_per_epoch = len(files) // recipe.batch_size

        def epoch_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            return batched_view_pairs(images, recipe.batch_size, augment)
    else:
        dataset = TwoViews(args.images, MoCoV2Augment(args.image_size, recipe.crop_scale, recipe.blur_sigma),
                           args.max_images, args.datalists)
        loader = DataLoader(dataset, batch_size=recipe.batch_size, shuffle=True, drop_last=True,
                            num_workers=args.workers)
        steps_per_epoch = len(loader)

        def epoch_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            return iter(loader)
    model = MoCoV2(args.depth, args.dim, recipe.queue_size, recipe.key_momentum, recipe.temperature,
                   recipe.bn_splits, recipe.symmetric)
    model.to(args.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=SGD_MOMENTUM,
                                weight_decay=recipe.weight_decay)
    budget_s = args.time_budget * SECONDS_PER_MINUTE
    total_steps = recipe.epochs * steps_per_epoch
    print(f"MoCo v2 ({args.preset}): ResNet-{args.depth}, {len(files)} images from {args.images} at "
          f"{args.image_size} px, up to {recipe.epochs} epochs of {steps_per_epoch} steps"
          f"{f', {args.time_budget:g} min budget' if budget_s > 0 else ''}; chance loss "
          f"log(1 + queue) = {math.log(1 + recipe.queue_size):.3f}; {recipe}", flush=True)
    start, step, history, done = time.monotonic(), 0, [], False
    for epoch in range(recipe.epochs):
        model.train()
        epoch_start, total, steps = time.monotonic(), 0.0, 0
        for im_q, im_k in epoch_batches():
            progress = schedule_progress(step, total_steps, time.monotonic() - start, budget_s)
            if progress >= 1:
                done = True
                break
            lr = learning_rate(recipe.lr, progress, recipe.warmup_fraction)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = model(im_q.to(args.device), im_k.to(args.device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, steps, step = total + loss.item(), steps + 1, step + 1
        if steps:
            history.append({"epoch": epoch + 1, "steps": steps, "loss": total / steps, "lr": lr,
                            "seconds": time.monotonic() - epoch_start})
            atomic_torch_save(checkpoint_content(model, optimizer, epoch + 1, args.depth, recipe, history),
                              args.output)
            print(f"epoch {epoch + 1}/{recipe.epochs}: loss {total / steps:.4f} over {steps} steps, lr {lr:.4f} "
                  f"({history[-1]['seconds']:.1f} s, {time.monotonic() - start:.0f} s in all), saved {args.output}",
                  flush=True)
        if done:
            print(f"time budget of {args.time_budget:g} min reached after {step} steps", flush=True)
            break
    return args.output


if __name__ == "__main__":
    main()
