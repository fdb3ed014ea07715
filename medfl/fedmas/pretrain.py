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
        --datalists $DATASET_ROOT/prrfl_ham10000/client*/train_client*.csv --output ... --depth 18
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from medfl.common.io import atomic_torch_save
from medfl.federations.isic2019.data import load_rgb
from medfl.fedmas.moco import (
    BN_SPLITS,
    EMBED_DIM,
    KEY_MOMENTUM,
    QUEUE_SIZE,
    TEMPERATURE,
    MoCoV2,
    MoCoV2Augment,
)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
# official MoCo v2 optimisation: SGD, lr 0.03 for batch 256, momentum 0.9, weight decay 1e-4, cosine schedule
LEARNING_RATE = 0.03
SGD_MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4
BATCH_SIZE = 256
EPOCHS = 200
DEPTH = 50
IMAGE_SIZE = 224


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


class TwoViews(Dataset):
    """Every image file under ``folder`` (recursively), or only those listed in ``datalists``; the first
    ``max_images`` in name order if > 0 -> two independently augmented views."""

    def __init__(self, folder: Path, augment: MoCoV2Augment, max_images: int = 0,
                 datalists: Sequence[Path] = ()) -> None:
        if not folder.is_dir():
            raise FileNotFoundError(f"image folder not found: {folder}")
        if datalists:
            self.files = sorted(listed_images(folder, datalists))
        else:
            self.files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if max_images > 0:
            self.files = self.files[:max_images]
        if not self.files:
            raise ValueError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
        self.augment = augment

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = load_rgb(self.files[index])
        return self.augment(image), self.augment(image)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, required=True, help="folder of unlabelled images (searched recursively)")
    parser.add_argument("--datalists", type=Path, nargs="+", default=[],
                        help="only the images in these CSVs' 'image' column (paths relative to --images)")
    parser.add_argument("--output", type=Path, required=True, help="checkpoint file to write")
    parser.add_argument("--max-images", type=int, default=0, help="use only the first N images (0: all)")
    parser.add_argument("--depth", type=int, default=DEPTH, choices=(18, 34, 50), help="ResNet depth")
    parser.add_argument("--image-size", type=int, default=IMAGE_SIZE, help="side of the square crops")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--lr", type=float, default=LEARNING_RATE, help="initial learning rate (cosine decay)")
    parser.add_argument("--dim", type=int, default=EMBED_DIM, help="embedding width of the MLP head")
    parser.add_argument("--queue-size", type=int, default=QUEUE_SIZE, help="number of negative keys")
    parser.add_argument("--key-momentum", type=float, default=KEY_MOMENTUM)
    parser.add_argument("--temperature", type=float, default=TEMPERATURE)
    parser.add_argument("--bn-splits", type=int, default=BN_SPLITS, help="BatchNorm groups per batch (shuffle BN)")
    parser.add_argument("--workers", type=int, default=0, help="data-loader worker processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> Path:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    dataset = TwoViews(args.images, MoCoV2Augment(args.image_size), args.max_images, args.datalists)
    if len(dataset) < args.batch_size:
        raise ValueError(f"{args.images}: {len(dataset)} images, fewer than --batch-size {args.batch_size}")
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True, num_workers=args.workers)
    model = MoCoV2(args.depth, args.dim, args.queue_size, args.key_momentum, args.temperature, args.bn_splits)
    model.to(args.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=SGD_MOMENTUM, weight_decay=WEIGHT_DECAY)
    print(f"MoCo v2: ResNet-{args.depth}, {len(dataset)} images from {args.images}, {args.epochs} epochs", flush=True)
    for epoch in range(args.epochs):
        for group in optimizer.param_groups:
            group["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * epoch / args.epochs))
        model.train()
        start, total = time.time(), 0.0
        for im_q, im_k in loader:
            loss = model(im_q.to(args.device), im_k.to(args.device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        checkpoint = {
            "epoch": epoch + 1,
            "arch": f"resnet{args.depth}",
            "state_dict": {f"module.{k}": v.cpu() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
        }
        atomic_torch_save(checkpoint, args.output)
        print(
            f"epoch {epoch + 1}/{args.epochs}: loss {total / len(loader):.4f} "
            f"({time.time() - start:.1f} s), saved {args.output}",
            flush=True,
        )
    return args.output


if __name__ == "__main__":
    main()
