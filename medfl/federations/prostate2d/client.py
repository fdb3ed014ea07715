"""The 2D prostate federation's client: slices of the prepared datalists, FedAvg's UNet, Dice loss and Adam."""

from __future__ import annotations

from typing import Literal

from monai.transforms import Compose, RandFlipd, RandRotate90d
from pydantic import Field

from medfl.common.data import SegmentationSliceDataset, datalist_path, read_datalist
from medfl.common.segmentation import SegmentationExecutor
from medfl.common.settings import ClientSettings

from .slices import IMAGE_SIZE, load_slices

TRAIN_AUGMENTATION = Compose([
    RandFlipd(keys=("image", "label"), prob=0.5, spatial_axis=0),
    RandFlipd(keys=("image", "label"), prob=0.5, spatial_axis=1),
    RandRotate90d(keys=("image", "label"), prob=0.5, max_k=3),
])


class ProstateSettings(ClientSettings):
    """The prostate client's ``config_train.json``: the common keys and its data."""

    data_root: str = Field(description="folder of the prepared slices (<site>/<case>/...); DATASET_ROOT allowed")
    datalist: str = Field(description="a datalist file, or a folder holding <client>.json; DATASET_ROOT allowed")
    augment: bool = Field(description="random flips and 90-degree rotations of the training slices (the original: none)")
    image_size: int = Field(IMAGE_SIZE, ge=0, description=(
        "slices resized to image_size x image_size before use (the original: 256); 0 keeps the stored size"))
    resize_mode: Literal["bilinear", "nearest"] = Field("bilinear", description=(
        "interpolation of that resize, image and label alike (bilinear: align_corners=True, as the original)"))


class ProstateSegmentationExecutor(SegmentationExecutor):
    """FedAvg client of the prostate federation (``jobs/fedavg_prostate``): the 8-bit 2D slices written by
    ``data_preparation/prepare_prostate_2d.py`` through the original's client transform
    (:func:`~medfl.federations.prostate2d.slices.slice_transform`; settings: :class:`ProstateSettings`)."""

    Settings = ProstateSettings

    def build_split(self, split: str) -> SegmentationSliceDataset:
        """The slices of ``split`` in this site's datalist (``training`` augmented if ``augment`` is set)."""
        base_dir = self.settings.path("data_root", self.site)
        datalist = datalist_path(self.settings.path("datalist", self.site), self.site)
        pairs = load_slices(read_datalist(datalist, split, self.site), base_dir, self.site,
                            self.settings.image_size, self.settings.resize_mode)
        augment = split == "training" and self.settings.augment
        return SegmentationSliceDataset(pairs, TRAIN_AUGMENTATION if augment else None)
