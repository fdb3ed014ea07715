"""Every job is its original by default (issue 16).

The committed job folders hold the originals' values (ALGORITHMS.md, cited as §, and the seed READMEs), read
through the settings classes that run them, so a key a job leaves out is checked at its default; the preparation
and test scripts default to the originals' preparation and protocol; docs/FIDELITY.md, the ledger of what still
differs, names real settings; and no page calls a job with ledger rows "original settings". Nothing here trains.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Set
from unittest import mock

import numpy as np
import pytest
import torch
from pydantic import BaseModel

from medfl.common.networks import build_network
from medfl.recipes import job_spec

ROOT = Path(__file__).resolve().parents[1]
JOBS = sorted(p.name for p in (ROOT / "jobs").iterdir() if (p / "meta.json").is_file())
LEDGER = ROOT / "docs" / "FIDELITY.md"
CONFIG = Path("app") / "config"

# ------------------------------------------------------------------ the originals' values

PROSTATE_UNET = {"name": "unet", "args": {"in_channels": 1, "out_channels": 1, "channels": [16, 32, 64, 128, 256],
                                          "strides": [2, 2, 2, 2], "num_res_units": 2}}
ADAM_1E3 = {"name": "adam", "lr": 1e-3, "momentum": 0.0, "weight_decay": 0.0}
PROSTATE_SITES = ("client_I2CVB", "client_MSD", "client_NCI_ISBI_3T")  # the FedSM README's clients
FEDSM_GLOBAL = [  # FedSM's global-model recipe, also FedAvg's on the prostate slices
    ("train", "network", PROSTATE_UNET, "§6.2"),
    ("train", "optimizer", ADAM_1E3, "§6.2"),
    ("train", "local_epochs", 1, "§6.2"),
    ("train", "batch_size", 1, "§6.2"),
    ("train", "augment", False, "§6.2 (no augmentation)"),
    ("train", "image_size", 256, "§6.2 Resized(256x256)"),
    ("train", "resize_mode", "bilinear", "§6.2 bilinear, align_corners"),
    ("server", "num_rounds", 100, "§6.3"),
    ("server", "weighting", "steps", "§6.3 weighted by NUM_STEPS"),
    ("meta", "min_clients", len(PROSTATE_SITES), "FedSM README: 3 clients"),
]
HARMOFL_PARTS = [  # what HarmoFL adds, in every HarmoFL job
    ("train", "perturbation_alpha", 0.05, "§1.3 alpha"),
    ("train", "truncate_to_smallest_client", True, "§1.4 min_data_len"),
    ("train", "local_epochs", 1, "§1.8 wk_iters"),
    ("server", "weighting", "equal", "§1.4 client_weights 1/N"),
    ("server", "best_weighting", "equal", "§1.4 best round by mean(val_acc) over sites, unweighted"),
    ("server", "best_from_round", 1, "§1.4 validation after each communication: the initial model is never scored"),
    ("server", "seed", 0, "§1.4 seed 0"),
]
SLIM_VGG = {"name": "medfl.federations.dermoscopy.networks:vgg16_slim", "args": {"num_classes": 3, "in_channels": 3}}
PRRFL_SGD = {"name": "sgd", "lr": 1e-2, "momentum": 0.0, "weight_decay": 1e-6}
PRRFL_RECIPE = [  # PRR-FL's training recipe, shared by its FedAvg baseline (and FedMAS's dermoscopy job)
    ("train", "optimizer", PRRFL_SGD, "§2.5 SGD(lr, weight_decay=1e-6), no momentum"),
    ("train", "lr_decay", 0.5, "§2.5 lr * 0.5^(round // 5)"),
    ("train", "lr_decay_rounds", 5, "§2.5"),
    ("train", "local_epochs", 5, "§2.4 wk_iters=5"),
    ("train", "batch_size", 16, "§2.6"),
    ("train", "drop_last", False, "§2.6 shuffled train loader, PyTorch's default: the last batch kept"),
    ("train", "image_size", 128, "§2.6 img_resize128"),
    ("train", "num_classes", 3, "§2.6 nv/bkl/mel"),
    ("train", "augment", True, "§2.6 train augmentation"),
    ("train", "seed", 1, "§2.5 seed 1"),
    ("server", "num_rounds", 50, "§2.5"),
    ("meta", "min_clients", 4, "§2.5 all 4 clients every round"),
]
ISIC_RECIPE = [  # the FedMAS README's commands, baselines included
    ("train", "optimizer", {"name": "adam", "lr": 3e-4, "momentum": 0.0, "weight_decay": 0.0}, "§3.4 Adam 3e-4"),
    ("train", "local_epochs", 1, "§3.8 README epochs 1"),
    ("train", "batch_size", 64, "§3.8 README batch_size 64"),
    ("train", "drop_last", True, "§3.4 train loader shuffle=True, drop_last=True"),
    ("train", "image_size", 224, "§3.4 Resize((224, 224))"),
    ("server", "num_rounds", 100, "§3.8 comm_round 100"),
    ("server", "seed", 0, "§3.7 set_random_seed(0)"),
    ("server", "best_from_round", 1, "§3.7 global BA after each aggregation: the initial model is never scored"),
    ("server", "best_weighting", "pooled_counts", "§3.7 balanced accuracy on the pooled test CSV"),
    ("meta", "min_clients", 6, "§3.6 6 clients, all every round"),
]
RESNET18 = {"name": "resnet_classifier", "args": {"n_classes": 8, "depth": 18}}
MEDMNIST_SGD = {"name": "sgd", "lr": 1e-3, "momentum": 0.9, "weight_decay": 0.0}

PINS: Dict[str, List[tuple]] = {
    "fedsm_prostate": FEDSM_GLOBAL + [
        ("train", "selector_network", {"name": "vgg11", "args": {"in_channels": 1, "num_classes": 3}},
         "§6.2 vgg11 without batch norm, one input channel, 3 sites"),
        ("train", "selector_optimizer", ADAM_1E3, "§6.2 selector Adam(lr 1e-3)"),
        ("train", "selector_epochs", 1, "§6.2 select_epochs 1"),
        ("server", "selector_network", {"name": "vgg11", "args": {"in_channels": 1, "num_classes": 3}}, "§6.2"),
        ("server", "soft_pull_lambda", 0.7, "§6.3 lambda = 0.7"),
        ("server", "best_weighting", "steps",
         "§6.3 best models by the clients' weighted validation metrics: weigh_by_local_iter, NUM_STEPS_CURRENT_ROUND"),
        ("server", "best_from_round", 1, "§6.3 round 0 is never a best round"),
        ("server", "select_threshold", 0.9, "§6.4 select_threshold 0.9"),
        ("server", "site_labels", {site: label for label, site in enumerate(PROSTATE_SITES)}, "§6.2 labels 0, 1, 2"),
        ("filters", "task_data_filters", ["medfl.fedsm.moments.AdamMomentsReceiver"], "§6.2 synced Adam moments"),
        ("filters", "task_result_filters", ["medfl.fedsm.moments.AdamMomentsSender"], "§6.2 synced Adam moments"),
    ],
    "fedavg_prostate": FEDSM_GLOBAL,
    "harmofl_prostate": HARMOFL_PARTS + [
        ("train", "network", {"name": "harmofl_unet", "args": {"in_channels": 3, "out_channels": 2}}, "§1.6 UNet 3->2"),
        ("train", "optimizer", {"name": "adam", "lr": 1e-4, "momentum": 0.0, "weight_decay": 1e-4},
         "§1.3 Adam(lr=1e-4, weight_decay=1e-4)"),
        ("train", "batch_size", 16, "§1.8 train.sh --batch 16"),
        ("train", "augment", True, "§1.5 RandomRotate90 + RandomFlip"),
        ("train", "val_metric", "dice_bg_fg", "§1.7 dice_coef includes background"),
        ("server", "num_rounds", 500, "§1.8 iters forced to 500"),
        ("meta", "min_clients", 6, "§1.5 six sites"),
    ],
    "harmofl_camelyon17": HARMOFL_PARTS + [
        ("train", "network", {"name": "harmofl_densenet121", "args": {"in_channels": 3, "out_channels": 2}},
         "§1.6 DenseNet-121, 2 classes"),
        ("train", "optimizer", {"name": "sgd", "lr": 1e-3, "momentum": 0.9, "weight_decay": 1e-4},
         "§1.3 SGD(lr=1e-3, momentum=0.9, weight_decay=1e-4)"),
        ("train", "batch_size", 128, "§1.8 --batch 128"),
        ("train", "drop_last", False, "§1.4 one pass over the local loader, PyTorch's default: last batch kept"),
        ("train", "val_metric", "accuracy", "§1.7 accuracy"),
        ("server", "num_rounds", 100, "§1.8 --iters 100"),
        ("meta", "min_clients", 5, "§1.5 five hospitals"),
    ],
    "harmofl_nuclei": HARMOFL_PARTS + [("server", "num_rounds", 100, "§1.8 --iters default 100")],
    "harmofl_prostate_2d": HARMOFL_PARTS + [
        ("train", "network", PROSTATE_UNET, "§6.2 FedSM's UNet (the comparison's shared model)"),
        ("train", "optimizer", ADAM_1E3, "§6.2 FedSM's Adam(lr 1e-3)"),
        ("train", "batch_size", 1, "§6.2 FedSM's loader, batch_size 1"),
        ("train", "augment", False, "§6.2 FedSM's transform, no augmentation"),
        ("train", "image_size", 256, "§6.2 Resized(256x256)"),
        ("server", "num_rounds", 100, "§6.3 the prostate jobs' 100 rounds"),
    ],
    "prrfl_dermoscopy": PRRFL_RECIPE + [
        ("train", "network", SLIM_VGG, "§2.7 VGG16_Slim_Checked(n_classes=3)"),
        ("train", "alpha1", 0.7, "§2.4 alpha1"),
        ("train", "alpha2", 0.9, "§2.4 alpha2"),
        ("train", "transfer", "det", "§2.4 DET between the personalised model and the deputy"),
        ("train", "val_metric", "macro_f1", "§2.8 macro F1"),
        ("server", "aggregation", "pfa", "§2.3 PFA on the deputies"),
        ("server", "pfa_ratio_start", 0.7, "§2.3 l_rate 0.7"),
        ("server", "pfa_ratio_end", 0.95, "§2.3 towards 0.95"),
        ("server", "weighting", "equal", "§2.5 equal weights"),
        ("server", "selection_start", 0.8, "§2.5 a_iter >= 0.8 iters"),
        ("server", "selection_metric", "personal_macro_f1", "§2.5 mean valid macro-F1 of the personalised models"),
    ],
    "fedavg_dermoscopy": PRRFL_RECIPE + [
        ("train", "network", SLIM_VGG, "§2.7"),
        ("train", "val_metric", "macro_f1", "§2.8 macro F1"),
        ("train", "loss", "ce", "§2.4 CE(z, y), PRR-FL's classification loss"),
        ("server", "weighting", "equal", "§2.5 client_weights 1/4"),
        ("server", "best_weighting", "equal", "§2.5 mean_k(valid macro-F1), unweighted"),
        ("server", "best_selection_start", 0.8, "§2.5 selected only when a_iter >= 0.8 iters"),
    ],
    "fedmas_isic2019": ISIC_RECIPE + [
        ("train", "network", {"name": "free_head_resnet", "args": {"n_classes": 8, "prior_dim": 2048, "depth": 18}},
         "§3.2 ResNet18 + p_free to the 2048-d MoCo-v2 R50 prior"),
        ("train", "loss", "bsm", "§3.4 Balanced Softmax"),
        ("train", "free_u", 3.0, "§3.4 free_u = 3 (README)"),
        ("train", "grad_clip_norm", 5.0, "§3.4 clip_grad_norm_(params, 5.0)"),
        ("server", "aggregation", "mas", "§3.1 README 'with MAS'"),
    ],
    "fedavg_bsm_isic2019": ISIC_RECIPE + [
        ("train", "network", RESNET18, "§3.2 ResNet18 trunk + fc"),
        ("train", "loss", "bsm", "§3.1 README BSM-FL: --loss_fn_name=BSM"),
        ("train", "grad_clip_norm", 0.0, "§3.4 only FedMAS's client clips"),
        ("server", "weighting", "steps", "§3.5 'avg': n_k = len(train_loader) * batch_size"),
    ],
    "fedavg_isic2019": ISIC_RECIPE + [
        ("train", "network", RESNET18, "§3.2 ResNet18 trunk + fc"),
        ("train", "loss", "ce", "§3.8 loss_fn_name default CE"),
        ("train", "grad_clip_norm", 0.0, "§3.4 only FedMAS's client clips"),
        ("server", "weighting", "steps", "§3.5 'avg': n_k = len(train_loader) * batch_size"),
    ],
    "fedmas_dermoscopy": PRRFL_RECIPE + [
        ("train", "loss", "bsm", "§3.4 Balanced Softmax"),
        ("train", "free_u", 3.0, "§3.4 free_u = 3"),
        ("train", "grad_clip_norm", 5.0, "§3.4 clip at 5"),
        ("server", "aggregation", "mas", "§3.5 (d) MAS weights"),
        ("server", "best_from_round", 1, "§3.7 evaluated after each aggregation: the initial model is never scored"),
    ],
    "fedavg_medmnist": [
        ("train", "network", {"name": "medmnist_cnn", "args": {}}, "§4.0 the getting-started Net"),
        ("train", "optimizer", MEDMNIST_SGD, "§4.0 SGD(lr=0.001, momentum=0.9)"),
        ("train", "local_epochs", 2, "§4.0 fit_config epochs 2"),
        ("train", "batch_size", 128, "§4.0 fit_config batch_size 128"),
        ("train", "drop_last", False, "§4.0 the seed's loaders keep the last partial batch (docs/medmnist.md)"),
        ("train", "eval_batch_size", 50, "§4.0 batches of 50"),
        ("train", "dataset", "pathmnist", "§4.0 PathMNIST"),
        ("server", "num_rounds", 2, "§4.0 --num_rounds 2"),
        ("server", "fraction_fit", 1.0, "§4.0 fraction_fit=1.0"),
        ("server", "min_fit_clients", 2, "§4.0 min_fit_clients=2"),
        ("server", "weighting", "samples", "§4.0 weights len(train set)"),
        ("server", "eval_batch_size", 50, "§4.0 centralised evaluation in batches of 50"),
        ("meta", "min_clients", 3, "§4.0 pool_size 3, min_available_clients 3"),
    ],
    "fedavg_medmnist_scaleout": [
        ("train", "network", {"name": "flower_lenet", "args": {}}, "§4.4 the example's LeNet"),
        ("train", "optimizer", {"name": "sgd", "lr": 1e-2, "momentum": 0.9, "weight_decay": 0.0}, "§4.4 SGD(0.01, 0.9)"),
        ("train", "local_epochs", 5, "§4.4 epochs 5"),
        ("train", "batch_size", 64, "§4.4 batch 64"),
        ("server", "num_rounds", 5, "§4.4 rounds 5"),
        ("server", "fraction_fit", 0.1, "§4.4 fraction_fit 0.1"),
        ("server", "min_fit_clients", 10, "§4.4 min_fit_clients 10"),
        ("server", "weighting", "samples", "§4.1 weighted by num_examples"),
        ("spec", "sites", 100, "§4.4 num_clients 100"),
    ],
}


class Pin(NamedTuple):
    job: str
    side: str
    key: str
    value: Any
    source: str


ALL_PINS = [Pin(job, *pin) for job, pins in PINS.items() for pin in pins]


# ------------------------------------------------------------------ the committed job folders

def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def import_object(dotted: str):
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


@lru_cache(maxsize=None)
def workflow(job: str) -> dict:
    return read_json(ROOT / "jobs" / job / CONFIG / "config_fed_server.json")["workflows"][0]


@lru_cache(maxsize=None)
def client_config(job: str) -> dict:
    return read_json(ROOT / "jobs" / job / CONFIG / "config_fed_client.json")


@lru_cache(maxsize=None)
def settings(job: str, side: str) -> BaseModel:
    """The job's workflow (``server``) or client (``train``) settings as the classes that run them load them."""
    if side == "server":
        return import_object(workflow(job)["path"]).Settings.load(workflow(job)["args"], "config_fed_server.json")
    executor = import_object(client_config(job)["executors"][0]["executor"]["path"])
    return executor.Settings.load(read_json(ROOT / "jobs" / job / CONFIG / "config_train.json"), "config_train.json")


def setting_keys(job: str) -> Set[str]:
    """Every key a job's workflow and clients declare, and its recipe's options."""
    return {*type(settings(job, "server")).model_fields, *type(settings(job, "train")).model_fields,
            *job_spec(job).options}


TRANSFER_FILTERS = "medfl.common.pieces."  # the arrays arrive bit-identical: no part of any method


def value_of(pin: Pin) -> Any:
    if pin.side == "meta":
        return read_json(ROOT / "jobs" / pin.job / "meta.json")[pin.key]
    if pin.side == "filters":  # the method's filters; medfl.common.pieces' only cut arrays for their transfer
        return sorted(f["path"] for entry in client_config(pin.job).get(pin.key, []) for f in entry["filters"]
                      if not f["path"].startswith(TRANSFER_FILTERS))
    if pin.side == "spec":
        return len(getattr(job_spec(pin.job), pin.key))
    value = getattr(settings(pin.job, pin.side), pin.key)
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def test_every_job_is_pinned():
    assert sorted(PINS) == JOBS, "each job in jobs/ needs its original's values here"


@pytest.mark.parametrize("pin", ALL_PINS, ids=[f"{p.job}-{p.side}.{p.key}" for p in ALL_PINS])
def test_job_default_is_the_originals(pin):
    actual = value_of(pin)
    assert actual == pin.value, (f"{pin.job}: {pin.side} '{pin.key}' is {actual!r}; the original's is "
                                 f"{pin.value!r} (ALGORITHMS.md {pin.source})")


# ------------------------------------------------------------------ preparation and test scripts

class _Parsed(Exception):
    """Raised instead of parsing, once the script's parser is built."""


@lru_cache(maxsize=None)
def parser_of(module: str) -> argparse.ArgumentParser:
    """The argument parser a script's ``main`` builds (captured before it parses)."""
    captured = []

    def capture(parser, *args, **kwargs):
        captured.append(parser)
        raise _Parsed

    with mock.patch.object(argparse.ArgumentParser, "parse_args", capture), pytest.raises(_Parsed):
        importlib.import_module(module).main([])
    return captured[0]


SCRIPT_DEFAULTS = [
    ("medfl.federations.prostate2d.preparation", "intensity", "fixed", "§6.1 image / 2048, values > 1 set to 1"),
    ("medfl.federations.prostate2d.preparation", "max_intensity", 2048.0, "§6.1 image / 2048"),
    ("medfl.federations.prostate2d.preparation", "size", 0, "§6.2 the client resizes (Resized 256)"),
    ("medfl.federations.prostate2d.preparation", "all_slices", False, "§6.1 only slices whose mask sums > 0"),
    ("medfl.federations.prostate2d.preparation", "split", [0.5, 0.25, 0.25], "§6.1 round(n*0.5), round(n*0.25)"),
    ("medfl.federations.prostate2d.preparation", "seed", 0, "§6.1 np.random.seed(0)"),
    ("medfl.fedsm.testing", "select_threshold", 0.9, "§6.4 default 0.9"),
    ("medfl.fedsm.testing", "checkpoint", "best", "§6.4 the best models"),
    ("medfl.federations.prostate_saml.preparation", "size", 384, "§1.5 input (3, 384, 384)"),
    ("medfl.federations.prostate_saml.preparation", "split_level", "slice", "§1.5 the split is at slice level"),
    ("medfl.federations.prostate_saml.preparation", "split", [0.64, 0.16, 0.2], "§1.5 int(0.64 n), int(0.8 n)"),
    ("medfl.federations.camelyon17.preparation", "val_fraction", 0.2, "§1.5 val = the last 20 %"),
    ("medfl.federations.dermoscopy.preparation", "image_size", 128, "§2.6 128x128"),
    ("medfl.federations.medmnist.preparation", "dataset", "pathmnist", "§4.0 PathMNIST"),
    ("medfl.federations.medmnist.preparation", "num_clients", 3, "§4.0 pool_size = 3"),
    ("medfl.federations.medmnist.preparation", "alpha", 1000.0, "§4.0 alpha=1000"),
    ("medfl.federations.medmnist.preparation", "val_ratio", 0.1, "§4.0 val_ratio=0.1"),
]


@pytest.mark.parametrize("module, option, value, source", SCRIPT_DEFAULTS,
                         ids=[f"{m.rsplit('.', 2)[-2]}-{o}" for m, o, _, _ in SCRIPT_DEFAULTS])
def test_script_default_is_the_originals(module, option, value, source):
    actual = parser_of(module).get_default(option)
    actual = list(actual) if isinstance(actual, tuple) else actual
    assert actual == value, f"{module} --{option} defaults to {actual!r}; the original's is {value!r} ({source})"


def test_prostate_preparation_is_the_originals():
    """§6.1: 39 cases split 20 / 10 / 9 by Python's round; intensity / 2048 clipped at 1, truncated to 8 bits."""
    from medfl.federations.prostate2d.preparation import fixed_intensity, split_cases, to_8bit

    sizes = [len(v) for v in split_cases([f"case{i:02d}" for i in range(39)]).values()]
    assert sizes == [20, 10, 9], f"case split {sizes}, the original's round(n*0.5)/round(n*0.25) gives 20/10/9 (§6.1)"
    levels = to_8bit(fixed_intensity(np.array([1024.0, 2047.0, 4096.0])))
    assert levels.tolist() == [127, 254, 255], f"8-bit levels {levels.tolist()}, not x/2048*255 truncated (§6.1)"


def test_harmofl_augmentation_draws_are_the_originals():
    """§1.5: k = randint(0, 4) turns a slice in 3 of 5 draws; the flip picks one of {none, both, rows, columns}."""
    from medfl.federations.prostate_saml.data import FLIP_CHOICES, ROTATE_PROB

    turning_draws, all_draws = 3, 5  # k in 1..3 of k in 0..4 (0 and 4 are the identity)
    assert ROTATE_PROB == turning_draws / all_draws, "RandomRotate90 turns with probability 3/5 (§1.5)"
    assert FLIP_CHOICES == 4, "RandomFlip: identity 1/4 and each of its three flips 1/4 (p = 0.75, §1.5)"


# ------------------------------------------------------------------ code paths the values rely on

def test_fedsm_selector_is_vgg11_without_batch_norm():
    """§6.2: cfg A, conv3x3 + ReLU, no BN, one input channel, AdaptiveAvgPool(7,7), 25088-4096-4096-3 classifier
    (built with a narrow hidden layer, which is all that changes with the width, to keep the test fast)."""
    from medfl.fedsm.networks import VGG11Selector

    original_hidden, narrow = 4096, 8
    spec = settings("fedsm_prostate", "train").selector_network
    assert inspect.signature(VGG11Selector).parameters["hidden"].default == original_hidden, "§6.2 4096 wide"
    selector = build_network(spec.name, **spec.args, hidden=narrow)
    convs = [m for m in selector.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [(m.in_features, m.out_features) for m in selector.modules() if isinstance(m, torch.nn.Linear)]
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in selector.modules()), "§6.2: no BN"
    assert [c.out_channels for c in convs] == [64, 128, 256, 256, 512, 512, 512, 512], "§6.2 VGG-11 cfg A"
    assert convs[0].in_channels == 1, "§6.2: single input channel"
    assert linears == [(512 * 7 * 7, narrow), (narrow, narrow), (narrow, 3)], "§6.2 classifier after pool (7, 7)"


class CountingOptimizer:
    """Counts steps and leaves the gradients in place (a torch optimizer's first step costs seconds of imports)."""

    def __init__(self):
        self.steps = 0

    def step(self):
        self.steps += 1

    def zero_grad(self, set_to_none=True):
        pass


def test_fedsm_selector_trains_full_batch():
    """§6.2: every batch of the epoch adds its gradient and the selector's optimizer steps once per epoch."""
    from medfl.fedsm.executor import FedSMExecutor, SiteLabelLoss

    batches, label = 3, 0
    batch = {"image": torch.ones(1, 1, 2, 2), "label": torch.zeros(1, 1, 2, 2)}
    client = FedSMExecutor.__new__(FedSMExecutor)  # only the selector's epoch is exercised
    client.selector = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    client.selector_optimizer = CountingOptimizer()
    client.train_loader = [batch] * batches
    client.site_label, client.device = label, torch.device("cpu")
    client.train_selector_epoch(abort_signal=None)
    assert client.selector_optimizer.steps == 1, f"{batches} batches gave {client.selector_optimizer.steps} steps (§6.2)"
    summed = client.selector[1].weight.grad.clone()
    client.selector.zero_grad()
    SiteLabelLoss(label)(client.selector(batch["image"]), batch["label"]).backward()
    assert torch.allclose(summed, batches * client.selector[1].weight.grad), "the step uses the summed gradient (§6.2)"


def test_fedsm_soft_pull_and_routing_are_the_originals():
    """§6.3: p_k <- lambda p_k + (1 - lambda)/(N - 1) sum_j!=k p_j; §6.4: personalised only if max_score > threshold."""
    from medfl.fedsm.softpull import soft_pull
    from medfl.fedsm.super_model import GLOBAL, route

    lam = settings("fedsm_prostate", "server").soft_pull_lambda
    pulled = soft_pull({site: {"w": np.array([float(k)])} for k, site in enumerate(PROSTATE_SITES)}, lam)
    others = (1 + 2) / 2  # the mean of the other two sites' weights, seen from site 0
    assert pulled[PROSTATE_SITES[0]]["w"][0] == pytest.approx((1 - lam) * others), "SoftPull (§6.3)"
    logits = torch.tensor([[2.0, 0.0, 0.0]])
    top = float(torch.softmax(logits, dim=1).max())
    assert int(route(logits, top)[0]) == GLOBAL, "a score equal to the threshold goes to the global model (§6.4)"
    assert int(route(logits, top - 1e-3)[0]) == 0, "a score above the threshold goes to the personalised model (§6.4)"


def test_prrfl_schedule_and_network_are_the_originals():
    """§2.3: L = 0.7 + r/R (0.95 - 0.7); §2.7: 13 bias-free convs with BN, fc1 256 -> 64 + BN1d, fc2 64 -> 3."""
    from medfl.prrfl.pfa import pfa_ratio

    server = settings("prrfl_dermoscopy", "server")
    last = server.num_rounds - 1
    assert pfa_ratio(0, server.num_rounds, server.pfa_ratio_start, server.pfa_ratio_end) == pytest.approx(0.7)
    assert pfa_ratio(last, server.num_rounds, server.pfa_ratio_start, server.pfa_ratio_end) == pytest.approx(0.945), \
        "0.945 at round 49 of 50 (§2.3)"
    spec = settings("prrfl_dermoscopy", "train").network
    net = build_network(spec.name, **spec.args)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    widths = [32, 32, 64, 64, 128, 128, 128, 128, 128, 128, 256, 256, 256]
    assert [c.out_channels for c in convs] == widths, "VGG16_Slim_Checked conv widths (§2.7)"
    assert all(m.bias is None for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))), \
        "vgg_nb has no biases (§2.7)"
    keys = net.state_dict()
    assert keys["fc1.linear.weight"].shape == (64, 256) and keys["fc2.linear.weight"].shape == (3, 64), "§2.7 head"
    assert "fc1.bn.running_mean" in keys and "layer1.0.conv.weight" in keys, "PFA dispatches on these names (§2.7)"


def conv_bn(c_in: int, c_out: int, kernel: int = 3) -> int:
    """Parameters of conv(kernel x kernel, bias) + affine BatchNorm."""
    return c_in * c_out * kernel * kernel + c_out + 2 * c_out


def linear(c_in: int, c_out: int) -> int:
    return c_in * c_out + c_out


def test_medmnist_network_is_the_getting_started_cnn():
    """§4.0: conv 3-16-16-64-64-64 with BN, 28 -> 4 after two pools, fc 64*4*4 -> 128 -> 128 -> 9 (PathMNIST)."""
    channels, classes, side = 3, 9, 4  # PathMNIST: 3x28x28, 9 classes; 4x4 maps before the fc
    expected = (conv_bn(channels, 16) + conv_bn(16, 16) + conv_bn(16, 64) + conv_bn(64, 64) + conv_bn(64, 64)
                + linear(64 * side * side, 128) + linear(128, 128) + linear(128, classes))
    spec = settings("fedavg_medmnist", "train").network
    net = build_network(spec.name, **spec.args)
    count = sum(p.numel() for p in net.parameters())
    assert count == expected, f"{spec.name} has {count} parameters, §4.0's Net {expected}"


# ------------------------------------------------------------------ the ledger

class Row(NamedTuple):
    jobs: frozenset
    heading: str
    cells: List[str]


class Section(NamedTuple):
    heading: str
    jobs: frozenset
    text: str


CELL = re.compile(r"(?<!\\)\|")
CODE = re.compile(r"`([^`]+)`")
JOB_NAME = re.compile(r"`(\w+)`")
KEY = re.compile(r"^([a-z_][a-z0-9_]*)(?:\.[a-z0-9_]+)*\s*:\s*(.+)$")
SCRIPT = re.compile(r"^([\w-]+\.py)\b(.*)$")
META = re.compile(r"^meta\.json (\w+)$")
COLUMNS = ("what", "original", "this job's default", "why", "setting that restores the original")
EVERY_JOB = "Every job"
SCRIPT_DIRS = ("data_preparation", "result_stat", "tools")


@lru_cache(maxsize=None)
def sections() -> List[Section]:
    """The ledger's sections: each heading, the jobs it names (``Every job``: all) and the text under it."""
    found, heading, lines = [], "", []
    for line in [*LEDGER.read_text().splitlines(), "#"]:
        if line.startswith("#"):
            jobs = set(JOBS) if heading == EVERY_JOB else set(JOB_NAME.findall(heading)) & set(JOBS)
            found.append(Section(heading, frozenset(jobs), "\n".join(lines)))
            heading, lines = line.lstrip("#").strip(), []
        else:
            lines.append(line)
    return found


@lru_cache(maxsize=None)
def rows() -> List[Row]:
    """Every difference row, with the jobs of its section."""
    found = []
    for section in sections():
        for line in section.text.splitlines():
            if line.startswith("|") and not line.startswith("|---"):
                cells = [c.strip() for c in CELL.split(line.strip())[1:-1]]
                if cells[0] != COLUMNS[0]:
                    found.append(Row(section.jobs, section.heading, cells))
    return found


def is_job_heading(heading: str) -> bool:
    """A heading made of job names only, e.g. ``### `fedsm_prostate` ``: the job's own statement."""
    return bool(JOB_NAME.search(heading)) and not JOB_NAME.sub("", heading).strip(" ,")


def test_every_job_has_a_statement_that_cites_its_original():
    for job in JOBS:
        own = [s for s in sections() if job in s.jobs and is_job_heading(s.heading)]
        assert own, f"docs/FIDELITY.md has no '### `{job}`' section"
        assert "§" in own[0].text, f"the statement of {job} cites no ALGORITHMS.md section"


def test_every_row_is_complete_and_belongs_to_jobs():
    assert rows(), "the ledger has no rows"
    for row in rows():
        assert row.jobs, f"a row under '{row.heading}' names no job of jobs/"
        assert len(row.cells) == len(COLUMNS) and all(row.cells), f"incomplete row under '{row.heading}': {row.cells}"


def script_source(script: str) -> str:
    """The code a script runs: the module its thin wrapper runs (``runpy.run_module``), or the script itself."""
    path = next((ROOT / d / script for d in SCRIPT_DIRS if (ROOT / d / script).is_file()), None)
    assert path is not None, f"the ledger names {script}, which is in none of {SCRIPT_DIRS}"
    text = path.read_text()
    target = re.search(r"run_module\(\"([\w.]+)\"", text)
    return (ROOT / (target.group(1).replace(".", "/") + ".py")).read_text() if target else text


def restoring_references(row: Row) -> List[str]:
    """Check each setting, script option and meta.json key the row's last column names; return what it named."""
    named = []
    for code in CODE.findall(row.cells[-1]):
        if key := KEY.match(code):
            for job in row.jobs:
                assert key.group(1) in setting_keys(job), \
                    f"'{key.group(1)}' (under '{row.heading}') is no setting of {job}"
            named.append(code)
        elif script := SCRIPT.match(code):
            source = script_source(script.group(1))
            for option in re.findall(r"--[\w-]+", script.group(2)):
                assert f'"{option}"' in source, f"{script.group(1)} has no option {option} (under '{row.heading}')"
            named.append(code)
        elif meta := META.match(code):
            for job in row.jobs:
                assert meta.group(1) in read_json(ROOT / "jobs" / job / "meta.json"), f"meta.json of {job}: {code}"
            named.append(code)
    return named


def test_every_restoring_setting_is_real_or_the_row_says_none():
    for row in rows():
        named = restoring_references(row)
        assert named or row.cells[-1].lower().startswith("none"), \
            f"row '{row.cells[0]}' under '{row.heading}' names no setting and does not say 'none'"


def current_value(job: str, key: str) -> Any:
    """The job's default of ``key``: its client's, else its workflow's, else its recipe's option."""
    for side in ("train", "server"):
        model = settings(job, side)
        if key in type(model).model_fields:
            value = getattr(model, key)
            return value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    return job_spec(job).options[key]


def test_a_restoring_value_is_not_already_the_default():
    """A row whose restoring ``key: value`` already is the job's default is stale."""
    for row in rows():
        for code in CODE.findall(row.cells[-1]):
            key = KEY.match(code)
            try:
                wanted = json.loads(key.group(2)) if key else None
            except json.JSONDecodeError:
                continue  # an elided value, e.g. network: {..., "prior_dim": 2048}
            for job in row.jobs if key else ():
                assert current_value(job, key.group(1)) != wanted, \
                    f"{job}: '{code}' under '{row.heading}' already is the default"


CLAIM = re.compile(r"\b(original|paper|released)(?:'s)?(?: method's| code's)? settings\b", re.IGNORECASE)


def test_no_page_calls_a_job_with_ledger_rows_original_settings():
    """Say "the original's recipe; differences: docs/FIDELITY.md" instead."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    with_rows = {job for row in rows() for job in row.jobs}
    for page in pages:
        if page == LEDGER:
            continue
        for paragraph in page.read_text().split("\n\n"):
            for claim in CLAIM.finditer(paragraph):
                about = {job for job in JOBS if job in paragraph} or set(JOBS)  # no job named: every job
                assert not about & with_rows, (f"{page.relative_to(ROOT)} says '{claim.group(0)}' of "
                                               f"{sorted(about & with_rows)}, which have rows in docs/FIDELITY.md")
