"""The 2D prostate federation's client: slices of the prepared datalists, FedAvg's UNet, Dice loss and Adam."""

from __future__ import annotations

from monai.transforms import Compose, RandFlipd, RandRotate90d
from pydantic import Field

from medfl.common.data import SegmentationSliceDataset, datalist_path, load_segmentation_pairs, read_datalist
from medfl.common.segmentation import SegmentationExecutor
from medfl.common.settings import ClientSettings

TRAIN_AUGMENTATION = Compose([
    RandFlipd(keys=("image", "label"), prob=0.5, spatial_axis=0),
    RandFlipd(keys=("image", "label"), prob=0.5, spatial_axis=1),
    RandRotate90d(keys=("image", "label"), prob=0.5, max_k=3),
])


class ProstateSettings(ClientSettings):
    """The prostate client's ``config_train.json``: the common keys and its data."""

    data_root: str = Field(description="folder of the prepared slices (<site>/<case>/...); DATASET_ROOT allowed")
    datalist: str = Field(description="a datalist file, or a folder holding <client>.json; DATASET_ROOT allowed")
    augment: bool = Field(description="random flips and 90-degree rotations of the training slices")


class ProstateSegmentationExecutor(SegmentationExecutor):
    """FedAvg client of the prostate federation (``jobs/fedavg_prostate``): the 2D slices written by
    ``data_preparation/prepare_prostate_2d.py`` (settings: :class:`ProstateSettings`)."""

    Settings = ProstateSettings

    def build_split(self, split: str) -> SegmentationSliceDataset:
        """The slices of ``split`` in this site's datalist (``training`` augmented unless ``augment`` is false)."""
        base_dir = self.settings.path("data_root", self.site)
        datalist = datalist_path(self.settings.path("datalist", self.site), self.site)
        pairs = load_segmentation_pairs(read_datalist(datalist, split, self.site), base_dir, self.site)
        augment = split == "training" and self.settings.augment
        return SegmentationSliceDataset(pairs, TRAIN_AUGMENTATION if augment else None)
