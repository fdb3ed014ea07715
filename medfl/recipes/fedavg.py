"""FedAvg's recipe and its jobs: the baselines of every federation and Flower's MedMNIST simulation.

Each job's values are written once below (the workflow's ``server`` arguments, the clients' ``train`` config) and
are exactly what ``jobs/<job>/`` holds.
"""

from __future__ import annotations

from medfl.fedavg.controller import FedAvgController
from medfl.fedavg.isic2019 import ISIC2019FedAvgController
from medfl.fedavg.medmnist import MedMNISTFedAvgController
from medfl.federations.dermoscopy.client import DermoscopyExecutor
from medfl.federations.isic2019.client import SkinLesionExecutor
from medfl.federations.medmnist.client import MedMNISTExecutor
from medfl.federations.prostate2d.client import ProstateSegmentationExecutor

from . import federations
from .base import JobSpec, MedflRecipe

FEDAVG_PROSTATE = JobSpec(
    name="fedavg_prostate",
    description="FedAvg baseline on the 2D prostate federation (FedSM's UNet, Dice loss, Adam)",
    controller=FedAvgController, executor=ProstateSegmentationExecutor, workflow_id="fedavg",
    sites=federations.PROSTATE,
    server={"num_rounds": 100, "weighting": "steps", "min_clients": 0, "resume_from": "", "task_check_period": 0.1},
    train={"data_root": "DATASET_ROOT/dataset_2D", "datalist": "DATASET_ROOT/datalist_2D",
           "network": {"name": "unet", "args": {"in_channels": 1, "out_channels": 1, "channels": [16, 32, 64, 128, 256],
                                                "strides": [2, 2, 2, 2], "num_res_units": 2}},
           "optimizer": {"name": "adam", "lr": 0.001}, "local_epochs": 1, "batch_size": 1, "augment": False,
           "image_size": 256, "resize_mode": "bilinear", "seed": 0, "num_threads": 0, "device": "auto"},
)

FEDAVG_DERMOSCOPY = JobSpec(
    name="fedavg_dermoscopy",
    description="FedAvg baseline on the PRR-FL dermoscopy federation (slim VGG-16, PRR-FL's SGD schedule)",
    controller=FedAvgController, executor=DermoscopyExecutor, workflow_id="fedavg",
    sites=federations.DERMOSCOPY,
    server={"num_rounds": 50, "weighting": "equal", "best_weighting": "equal", "best_selection_start": 0.8,
            "min_clients": 0, "task_check_period": 0.1},
    train={"data_root": "DATASET_ROOT/prrfl_ham10000", "image_size": 128, "num_classes": 3, "augment": True,
           "augmentation": "batched",
           "network": {"name": "medfl.federations.dermoscopy.networks:vgg16_slim",
                       "args": {"num_classes": 3, "in_channels": 3}},
           "optimizer": {"name": "sgd", "lr": 0.01, "weight_decay": 1e-06}, "lr_decay": 0.5, "lr_decay_rounds": 5,
           "local_epochs": 5, "batch_size": 16, "val_metric": "macro_f1", "loss": "ce", "seed": 1,
           "num_threads": 0, "device": "auto"},
)

FEDAVG_ISIC2019 = JobSpec(
    name="fedavg_isic2019",
    description="plain FedAvg on Fed-ISIC2019 (FedMAS's baseline; ResNet-18, cross-entropy, Adam 3e-4)",
    controller=ISIC2019FedAvgController, executor=SkinLesionExecutor, workflow_id="fedavg",
    sites=federations.ISIC2019,
    server={"num_rounds": 100, "weighting": "steps", "best_from_round": 1, "min_clients": 0,
            "task_check_period": 0.1, "trunk_checkpoint": "DATASET_ROOT/pretrained/resnet18-f37072fd.pth"},
    train={"data_root": "DATASET_ROOT/fed_isic2019",
           "network": {"name": "resnet_classifier", "args": {"n_classes": 8, "depth": 18}},
           "loss": "ce", "grad_clip_norm": 0.0, "optimizer": {"name": "adam", "lr": 0.0003}, "local_epochs": 1,
           "batch_size": 64, "image_size": 224, "seed": 0, "num_threads": 0, "device": "auto"},
)

FEDAVG_BSM_ISIC2019 = JobSpec(
    name="fedavg_bsm_isic2019",
    description="BSM-FL on Fed-ISIC2019: FedAvg with Balanced Softmax (FedMAS's baseline)",
    controller=ISIC2019FedAvgController, executor=SkinLesionExecutor, workflow_id="fedavg",
    sites=federations.ISIC2019,
    server={"num_rounds": 100, "weighting": "steps", "best_from_round": 1, "min_clients": 0,
            "task_check_period": 0.1, "trunk_checkpoint": "DATASET_ROOT/pretrained/resnet18-f37072fd.pth"},
    train={"data_root": "DATASET_ROOT/fed_isic2019",
           "network": {"name": "resnet_classifier", "args": {"n_classes": 8, "depth": 18}},
           "loss": "bsm", "grad_clip_norm": 0.0, "optimizer": {"name": "adam", "lr": 0.0003}, "local_epochs": 1,
           "batch_size": 64, "image_size": 224, "seed": 0, "num_threads": 0, "device": "auto"},
)

FEDAVG_MEDMNIST = JobSpec(
    name="fedavg_medmnist",
    description="the seed's PathMNIST FedAvg tutorial (its getting-started CNN, 3 sites, 2 rounds x 2 epochs)",
    controller=MedMNISTFedAvgController, executor=MedMNISTExecutor, workflow_id="fedavg",
    sites=federations.MEDMNIST,
    server={"num_rounds": 2, "fraction_fit": 1.0, "min_fit_clients": 2, "sampling_seed": 0, "weighting": "samples",
            "min_clients": 0, "task_check_period": 0.1},
    train={"dataset": "pathmnist", "data_root": "DATASET_ROOT/medmnist",
           "datalist": "DATASET_ROOT/medmnist/splits_pathmnist", "network": {"name": "medmnist_cnn", "args": {}},
           "optimizer": {"name": "sgd", "lr": 0.001, "momentum": 0.9}, "local_epochs": 2, "batch_size": 128,
           "eval_batch_size": 50, "val_metric": "accuracy", "seed": 0, "num_threads": 0, "device": "auto"},
)

FEDAVG_MEDMNIST_SCALEOUT = JobSpec(
    name="fedavg_medmnist_scaleout",
    description="Flower's many-client PathMNIST simulation (LeNet, 10 of N clients sampled a round, server test)",
    controller=MedMNISTFedAvgController, executor=MedMNISTExecutor, workflow_id="fedavg",
    sites=federations.MEDMNIST_SCALEOUT, min_clients=10,
    server={"num_rounds": 5, "fraction_fit": 0.1, "min_fit_clients": 10, "sampling_seed": 0, "weighting": "samples",
            "min_clients": 0, "task_check_period": 0.1},
    train={"dataset": "pathmnist", "data_root": "DATASET_ROOT/medmnist",
           "datalist": "DATASET_ROOT/medmnist/splits_pathmnist_100", "network": {"name": "flower_lenet", "args": {}},
           "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9}, "local_epochs": 5, "batch_size": 64,
           "eval_batch_size": 50, "val_metric": "accuracy", "seed": 0, "num_threads": 0, "device": "auto"},
)


class FedAvgRecipe(MedflRecipe):
    """FedAvg (McMahan et al., 2017) as an NVFlare recipe: ``FedAvgController`` (or its ISIC2019 / MedMNIST
    variant) and the federation's baseline client."""

    jobs = {spec.name: spec for spec in (FEDAVG_PROSTATE, FEDAVG_DERMOSCOPY, FEDAVG_ISIC2019, FEDAVG_BSM_ISIC2019,
                                         FEDAVG_MEDMNIST, FEDAVG_MEDMNIST_SCALEOUT)}
