"""A job's server workflow outside NVFlare, at its real sizes: for the aggregation-time and payload-size benchmarks.

:func:`offline_round` builds the controller a job's ``config_fed_server.json`` names, with the job's arguments,
gives it the models its ``initial_models`` builds from the job's ``config_train.json`` (the real networks), and
makes one round of client results shaped as the method's clients export them (same keys and shapes as what
they received, plus the method's extras: FedSM's selector Adam moments, FedMAS's robust factors). Logging goes
nowhere, files go to a temporary folder.
"""

from __future__ import annotations

import importlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List, Optional

import numpy as np
from simrun import ROOT

from nvflare.app_common.abstract.fl_model import FLModel

from medfl.common.controller import RoundController
from medfl.common.params import Params, bundle, unbundle
from medfl.common.protocol import NUM_TRAIN_SAMPLES, NUM_TRAIN_STEPS, NUM_VAL_SAMPLES
from medfl.fedavg.controller import FedAvgController
from medfl.federations.isic2019.protocol import SAMPLES_PER_EPOCH
from medfl.federations.medmnist.data import medmnist_info
from medfl.federations.medmnist.networks import MEDMNIST_IMAGE_SIZE, network_for_data
from medfl.fedmas.protocol import PRIOR_SHA256, ROBUST_FACTOR
from medfl.fedsm.moments import MOMENT_KEYS
from medfl.fedsm.protocol import MOMENTS_NAME

# Clients per job: the demo federations' (FedSM / FedAvg prostate: 3 sites; HarmoFL prostate: 6 SAML sites;
# PRR-FL HAM10000: 4 sources; Fed-ISIC2019: 6 centres; MedMNIST: the seed's 3 sites, 10 sampled when scaled out).
JOB_CLIENTS = {
    "fedavg_prostate": 3, "fedsm_prostate": 3, "harmofl_prostate": 6, "prrfl_dermoscopy": 4,
    "fedavg_dermoscopy": 4, "fedmas_isic2019": 6, "fedavg_isic2019": 6, "fedavg_medmnist": 3,
    "fedavg_medmnist_scaleout": 10,
}
SAMPLES_PER_CLIENT = 100  # the aggregation weights' inputs; their values do not change the cost


@dataclass
class OfflineRound:
    job: str
    controller: RoundController
    clients: List[str]
    results: Dict[str, FLModel]


def job_config(job: str, name: str, job_dir: Optional[Path] = None) -> dict:
    """``name`` of ``jobs/<job>/app/config`` (or of the job folder ``job_dir``, e.g. a variant of it)."""
    return json.loads(((job_dir or ROOT / "jobs" / job) / "app" / "config" / name).read_text())


def _silence(controller: RoundController, app_dir: Path, clients: List[str]) -> None:
    quiet = lambda *args, **kwargs: None  # noqa: E731
    controller.info = controller.warning = quiet
    controller.get_app_dir = lambda: str(app_dir)
    controller.engine = SimpleNamespace(get_clients=lambda: [SimpleNamespace(name=c) for c in clients])


def _moments(params: Params) -> Params:
    """Adam state of every parameter, shaped as :func:`medfl.fedsm.moments.adam_moments` sends it."""
    return {f"{key}.{moment}": np.zeros_like(value) for key, value in params.items()
            if value.dtype.kind == "f" and "running_" not in key for moment in MOMENT_KEYS}


def client_update(job: str, controller: RoundController, client: str) -> Params:
    """What ``client`` sends back: the received models (perturbed), plus the method's own extras."""
    received = unbundle(controller.payload_for(client))
    rng = np.random.default_rng(len(client))
    update = {name: {k: v + rng.standard_normal(v.shape).astype(v.dtype) if v.dtype.kind == "f" else v
                     for k, v in params.items()} for name, params in received.items()}
    if job == "fedsm_prostate":
        update[MOMENTS_NAME] = _moments(update["selector"])
    return bundle(update)


def offline_round(job: str, round_number: int = 1, job_dir: Optional[Path] = None) -> OfflineRound:
    """The job's controller with its initial models and one round of results from ``JOB_CLIENTS[job]`` clients;
    ``job_dir``: a variant folder of ``job`` to read the configuration from instead of ``jobs/<job>``."""
    workflow = job_config(job, "config_fed_server.json", job_dir)["workflows"][0]
    module, _, name = workflow["path"].rpartition(".")
    # initial weights do not change the cost (and the trunk file is not here)
    args = {k: v for k, v in workflow["args"].items() if k not in ("site_labels", "trunk_checkpoint")}
    controller = getattr(importlib.import_module(module), name)(**args)
    clients = [f"site{i + 1}" for i in range(JOB_CLIENTS[job])]
    _silence(controller, Path(tempfile.mkdtemp(prefix=f"offline_{job}_")), clients)
    if hasattr(controller, "site_labels"):
        controller.site_labels = {client: label for label, client in enumerate(clients)}
    if job.startswith("fedavg_medmnist"):  # its initial_models also loads the test set; only the model is needed
        controller.network = network_for_data(controller.settings.network, medmnist_info(controller.settings.dataset),
                                              MEDMNIST_IMAGE_SIZE)
        controller.models = FedAvgController.initial_models(controller)
    else:
        controller.models = controller.initial_models()
    if job == "fedsm_prostate":  # from round 1 on the server also sends the averaged selector moments
        controller.selector_moments = _moments(controller.models["selector"])
    meta = {NUM_TRAIN_SAMPLES: SAMPLES_PER_CLIENT, NUM_VAL_SAMPLES: SAMPLES_PER_CLIENT, NUM_TRAIN_STEPS: SAMPLES_PER_CLIENT,
            SAMPLES_PER_EPOCH: SAMPLES_PER_CLIENT, ROBUST_FACTOR: 1.0, PRIOR_SHA256: "same"}
    results = {client: FLModel(params=client_update(job, controller, client), current_round=round_number,
                               meta={**meta, "client_name": client}) for client in clients}
    return OfflineRound(job, controller, clients, results)


def payload_bytes(params: Params) -> int:
    """Bytes of the arrays in a flat parameter dict (what NVFlare serialises, without its framing)."""
    return int(sum(np.asarray(v).nbytes for v in params.values()))
