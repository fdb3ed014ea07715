"""The 2D prostate federation's client: slices of the prepared datalists, FedAvg's UNet, Dice loss and Adam."""

from __future__ import annotations

from monai.transforms import Compose, RandFlipd, RandRotate90d

from medfl.common.config import config_path
from medfl.common.data import SegmentationSliceDataset, datalist_path, load_segmentation_pairs, read_datalist
from medfl.common.segmentation import SegmentationExecutor

TRAIN_AUGMENTATION = Compose([
    RandFlipd(keys=("image", "label"), prob=0.5, spatial_axis=0),
    RandFlipd(keys=("image", "label"), prob=0.5, spatial_axis=1),
    RandRotate90d(keys=("image", "label"), prob=0.5, max_k=3),
])


class ProstateSegmentationExecutor(SegmentationExecutor):
    """FedAvg client of the prostate federation (``jobs/fedavg_prostate``): the 2D slices written by
    ``data_preparation/prepare_prostate_2d.py``.

    ``config_train.json`` data keys: ``dataset_base_dir``, ``datalist_json_path`` (a file, or a folder holding
    ``<site>.json``), ``augment`` (random flips and 90-degree rotations of the training slices).
    """

    def build_split(self, split: str) -> SegmentationSliceDataset:
        """The slices of ``split`` in this site's datalist (``training`` augmented unless ``augment`` is false)."""
        base_dir = config_path(self.config, "dataset_base_dir", self.site)
        datalist = datalist_path(config_path(self.config, "datalist_json_path", self.site), self.site)
        pairs = load_segmentation_pairs(read_datalist(datalist, split, self.site), base_dir, self.site)
        augment = split == "training" and self.config.get("augment", True)
        return SegmentationSliceDataset(pairs, TRAIN_AUGMENTATION if augment else None)
