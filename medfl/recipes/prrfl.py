"""PRR-FL's recipe and its job: Progressive Fourier Aggregation on the server, Deputy-Enhanced Transfer on the
clients.

The job's values are written once below and are exactly what ``jobs/prrfl_dermoscopy/`` holds.
"""

from __future__ import annotations

from medfl.prrfl.controller import PFAController
from medfl.prrfl.executor import DETExecutor

from . import federations
from .base import JobSpec, MedflRecipe

PRRFL_DERMOSCOPY = JobSpec(
    name="prrfl_dermoscopy",
    description="PRR-FL (Chen et al., MICCAI 2021) on HAM10000 by acquisition source (slim VGG-16)",
    controller=PFAController, executor=DETExecutor, workflow_id="prrfl",
    sites=federations.DERMOSCOPY,
    server={"num_rounds": 50, "aggregation": "pfa", "pfa_ratio_start": 0.7, "pfa_ratio_end": 0.95,
            "weighting": "equal", "selection_start": 0.8, "selection_metric": "personal_macro_f1", "min_clients": 0,
            "task_check_period": 0.1},
    train={"data_root": "DATASET_ROOT/prrfl_ham10000", "image_size": 128, "num_classes": 3, "augment": True,
           "augmentation": "batched",
           "network": {"name": "medfl.federations.dermoscopy.networks:vgg16_slim",
                       "args": {"num_classes": 3, "in_channels": 3}},
           "optimizer": {"name": "sgd", "lr": 0.01, "weight_decay": 1e-06}, "lr_decay": 0.5, "lr_decay_rounds": 5,
           "local_epochs": 5, "batch_size": 16, "alpha1": 0.7, "alpha2": 0.9, "transfer": "det",
           "val_metric": "macro_f1", "seed": 1, "num_threads": 0, "device": "auto"},
)


class PRRFLRecipe(MedflRecipe):
    """PRR-FL as an NVFlare recipe: :class:`~medfl.prrfl.controller.PFAController` and the DET client."""

    jobs = {PRRFL_DERMOSCOPY.name: PRRFL_DERMOSCOPY}
