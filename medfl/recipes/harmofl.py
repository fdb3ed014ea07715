"""HarmoFL's recipe and its jobs: HarmoFL's workflow (amplitude exchange before round 0, FedAvg with equal weights)
and its clients (amplitude normalisation, weight-perturbed steps) on four federations.

Each job's values are written once below and are exactly what ``jobs/<job>/`` holds.
"""

from __future__ import annotations

from medfl.harmofl.controller import HarmoFLController
from medfl.harmofl.executor import (
    HarmoFLCamelyon17Executor,
    HarmoFLNucleiExecutor,
    HarmoFLProstateExecutor,
    HarmoFLSliceExecutor,
)

from . import federations
from .base import JobSpec, MedflRecipe

SERVER = {"weighting": "equal", "best_weighting": "equal", "best_from_round": 1, "min_clients": 0, "resume_from": "",
          "task_check_period": 0.1}
HARMOFL = {"perturbation_alpha": 0.05, "amplitude_mode": "paper", "amplitude_window_ratio": None,
           "amplitude_momentum": None, "truncate_to_smallest_client": True}

HARMOFL_PROSTATE = JobSpec(
    name="harmofl_prostate",
    description="HarmoFL (Jiang et al., AAAI 2022) on the six SAML prostate sites (2.5-D slices, the paper's UNet)",
    controller=HarmoFLController, executor=HarmoFLProstateExecutor, workflow_id="harmofl",
    sites=federations.SAML_PROSTATE,
    server={"num_rounds": 500, **SERVER},
    train={"data_root": "DATASET_ROOT/dataset_harmofl_prostate", "datalist": "DATASET_ROOT/datalist_harmofl_prostate",
           "network": {"name": "harmofl_unet", "args": {"in_channels": 3, "out_channels": 2}},
           "optimizer": {"name": "adam", "lr": 0.0001, "weight_decay": 0.0001}, **HARMOFL, "local_epochs": 1,
           "batch_size": 16, "augment": True, "val_metric": "dice_bg_fg", "seed": 0, "num_threads": 0,
           "device": "auto"},
)

HARMOFL_PROSTATE_2D = JobSpec(
    name="harmofl_prostate_2d",
    description="HarmoFL on FedSM's 2D prostate slices with FedAvg's UNet, Dice loss and Adam",
    controller=HarmoFLController, executor=HarmoFLSliceExecutor, workflow_id="harmofl",
    sites=federations.PROSTATE,
    server={"num_rounds": 100, **SERVER},
    train={"data_root": "DATASET_ROOT/dataset_2D", "datalist": "DATASET_ROOT/datalist_2D",
           "network": {"name": "unet", "args": {"in_channels": 1, "out_channels": 1, "channels": [16, 32, 64, 128, 256],
                                                "strides": [2, 2, 2, 2], "num_res_units": 2}},
           "optimizer": {"name": "adam", "lr": 0.001}, **HARMOFL, "local_epochs": 1, "batch_size": 1, "augment": False,
           "seed": 0, "num_threads": 0, "device": "auto"},
)

HARMOFL_CAMELYON17 = JobSpec(
    name="harmofl_camelyon17",
    description="HarmoFL on Camelyon17 histology patches (DenseNet-121, SGD)",
    controller=HarmoFLController, executor=HarmoFLCamelyon17Executor, workflow_id="harmofl",
    sites=federations.CAMELYON17,
    server={"num_rounds": 100, **SERVER},
    train={"data_root": "DATASET_ROOT/camelyon17_v1.0", "datalist": "DATASET_ROOT/datalist_camelyon17",
           "network": {"name": "harmofl_densenet121", "args": {"in_channels": 3, "out_channels": 2}},
           "optimizer": {"name": "sgd", "lr": 0.001, "momentum": 0.9, "weight_decay": 0.0001}, **HARMOFL,
           "local_epochs": 1, "batch_size": 128, "val_metric": "accuracy", "seed": 0, "num_threads": 0,
           "device": "auto"},
)

HARMOFL_NUCLEI = JobSpec(
    name="harmofl_nuclei",
    description="HarmoFL on nuclei segmentation (four acquisition styles, the paper's UNet)",
    controller=HarmoFLController, executor=HarmoFLNucleiExecutor, workflow_id="harmofl",
    sites=federations.NUCLEI, min_clients=2,
    server={"num_rounds": 100, **SERVER},
    train={"data_root": "DATASET_ROOT/nuclei", "datalist": "DATASET_ROOT/datalist_nuclei", "patch_size": 256,
           "channels": 3, "intensity": "dtype",
           "network": {"name": "harmofl_unet", "args": {"in_channels": 3, "out_channels": 2}},
           "optimizer": {"name": "adam", "lr": 0.0001, "weight_decay": 0.0001}, **HARMOFL, "local_epochs": 1,
           "batch_size": 16, "augment": True, "val_metric": "dice_fg", "seed": 0, "num_threads": 0, "device": "auto"},
)


class HarmoFLRecipe(MedflRecipe):
    """HarmoFL as an NVFlare recipe: :class:`~medfl.harmofl.controller.HarmoFLController` and the federation's
    HarmoFL client, which also runs the amplitude-exchange tasks."""

    jobs = {spec.name: spec for spec in (HARMOFL_PROSTATE, HARMOFL_PROSTATE_2D, HARMOFL_CAMELYON17, HARMOFL_NUCLEI)}
