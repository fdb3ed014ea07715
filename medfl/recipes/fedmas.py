"""FedMAS's recipe and its jobs: aggregation weighted by each client's divergence to a frozen MoCo-v2 prior, and
Balanced Softmax, on Fed-ISIC2019 and on the PRR-FL dermoscopy federation.

Each job's values are written once below and are exactly what ``jobs/<job>/`` holds.
"""

from __future__ import annotations

from medfl.fedmas.controller import FedMASController, MASController
from medfl.fedmas.dermoscopy import DermoscopyFedMASExecutor
from medfl.fedmas.executor import FedMASExecutor

from . import federations
from .base import JobSpec, MedflRecipe

FEDMAS_ISIC2019 = JobSpec(
    name="fedmas_isic2019",
    description="FedMAS (Elbatel et al., MICCAI-W 2023) on Fed-ISIC2019 (ResNet-18 with a projector head)",
    controller=FedMASController, executor=FedMASExecutor, workflow_id="fedmas",
    sites=federations.ISIC2019,
    server={"num_rounds": 100, "aggregation": "mas", "best_from_round": 1, "min_clients": 0, "task_check_period": 0.1,
            "trunk_checkpoint": "DATASET_ROOT/pretrained/resnet18-f37072fd.pth"},
    train={"data_root": "DATASET_ROOT/fed_isic2019",
           "prior_checkpoint": "DATASET_ROOT/pretrained/moco_v2_800ep_pretrain.pth.tar",
           "network": {"name": "free_head_resnet", "args": {"n_classes": 8, "prior_dim": 2048, "depth": 18}},
           "loss": "bsm", "free_u": 3.0, "prior_bn_quirk": False, "grad_clip_norm": 5.0,
           "optimizer": {"name": "adam", "lr": 0.0003}, "local_epochs": 1, "batch_size": 64, "image_size": 224,
           "seed": 0, "num_threads": 0, "device": "auto"},
)

FEDMAS_DERMOSCOPY = JobSpec(
    name="fedmas_dermoscopy",
    description="FedMAS on the PRR-FL dermoscopy federation (slim VGG-16 with a projector head, PRR-FL's SGD)",
    controller=MASController, executor=DermoscopyFedMASExecutor, workflow_id="fedmas",
    sites=federations.DERMOSCOPY,
    server={"num_rounds": 50, "aggregation": "mas", "best_from_round": 1, "min_clients": 0, "task_check_period": 0.1},
    train={"data_root": "DATASET_ROOT/prrfl_ham10000",
           "prior_checkpoint": "DATASET_ROOT/pretrained/moco_r18_prrfl_ham10000.pth.tar", "image_size": 128,
           "num_classes": 3, "augment": True, "augmentation": "batched",
           "network": {"name": "medfl.fedmas.dermoscopy:free_head_vgg16_slim",
                       "args": {"num_classes": 3, "in_channels": 3, "prior_dim": 512}},
           "loss": "bsm", "free_u": 3.0, "prior_bn_quirk": False, "grad_clip_norm": 5.0,
           "optimizer": {"name": "sgd", "lr": 0.01, "weight_decay": 1e-06}, "lr_decay": 0.5, "lr_decay_rounds": 5,
           "local_epochs": 5, "batch_size": 16, "val_metric": "macro_f1", "seed": 1, "num_threads": 0,
           "device": "auto"},
)


class FedMASRecipe(MedflRecipe):
    """FedMAS as an NVFlare recipe: :class:`~medfl.fedmas.controller.MASController` (or its Fed-ISIC2019 variant)
    and the FedMAS client of the federation."""

    jobs = {spec.name: spec for spec in (FEDMAS_ISIC2019, FEDMAS_DERMOSCOPY)}
