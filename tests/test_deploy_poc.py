"""Deployment: every job in ``jobs/`` runs in a POC deployment, both ways a hospital may take (DEPLOYMENT.md).

(a) The sites install medfl and allow its classes. One job of each method (:data:`POC_ENV_JOBS`) runs through its
recipe in NVFlare's PocEnv (``test_recipes_poc.py``: the recipe exports the very folder of ``jobs/``, which
``test_recipes.py`` checks, and submits it). Every other job runs here: one POC deployment per federation (the jobs
that share client names share it); each job is submitted as a tiny 1-round variant on its demo federation (the e2e
tests' recipes), configuration only, downloaded, and its server outputs checked.
(b) No site has medfl: a job exported with ``medfl export-byoc`` carries its code and runs from it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Tuple

import pytest
import torch
from conftest import PROSTATE_CLIENTS, PROSTATE_TRAIN, SMALL_SELECTOR
from helpers import PROJECT_ROOT, PocDeployment, make_job_variant, python_without_medfl, run

from medfl.byoc import export_byoc

pytestmark = pytest.mark.deploy

TINY_UNET = {"name": "unet", "args": {"in_channels": 1, "out_channels": 1, "channels": [4, 8], "strides": [2],
                                      "num_res_units": 0}}
HARMOFL_UNET = {"name": "harmofl_unet",
                "args": {"in_channels": 3, "out_channels": 2, "features": [4, 8, 8, 16, 16, 4]}}
HARMOFL_DENSENET = {"name": "harmofl_densenet121",
                    "args": {"in_channels": 3, "out_channels": 2, "init_features": 8, "growth_rate": 4,
                             "block_config": [1, 1, 1, 1]}}
SIZE = 32
PRIOR, TRUNK = "pretrained/moco_r18.pth.tar", "pretrained/resnet18.pth"
ISIC_SMALL = {"image_size": SIZE, "batch_size": 16}
ISIC_TRUNK = {"trunk_checkpoint": f"DATASET_ROOT/{TRUNK}"}
PRRFL_SMALL = {"image_size": SIZE, "local_epochs": 1,
               "network": {"name": "medfl.federations.dermoscopy.networks:vgg16_slim",
                           "args": {"blocks": [[4], [4], [4], [4], [4]], "hidden_features": 4}}}
FEDMAS_DERMOSCOPY_SMALL = {**PRRFL_SMALL, "prior_checkpoint": f"DATASET_ROOT/{PRIOR}",
                           "network": {"name": "medfl.fedmas.dermoscopy:free_head_vgg16_slim",
                                       "args": {**PRRFL_SMALL["network"]["args"], "prior_dim": 512}}}


# ---------------------------------------------------------------------- demo federations (the e2e recipes)
def _prostate(root: Path, shared: Path) -> None:
    from medfl.federations.prostate2d.demo import make_demo_federation
    from medfl.federations.prostate2d.preparation import prepare

    make_demo_federation(root / "raw", cases_per_site=6, seed=0)
    prepare(root / "raw", root, source="saml")


def _harmofl_prostate(root: Path, shared: Path) -> None:
    from medfl.federations.prostate2d.demo import make_demo_federation
    from medfl.federations.prostate_saml.preparation import HARMOFL_PROSTATE_SITES, prepare

    make_demo_federation(root / "raw", cases_per_site=6, seed=0, sites=HARMOFL_PROSTATE_SITES)
    prepare(root / "raw", root, size=SIZE)


def _camelyon17(root: Path, shared: Path) -> None:
    from medfl.federations.camelyon17.demo import make_demo_camelyon17
    from medfl.federations.camelyon17.preparation import prepare

    make_demo_camelyon17(root / "raw" / "demo_camelyon17", slides_per_hospital=4, patches_per_slide=6)
    prepare(root / "raw" / "demo_camelyon17", root)


def _nuclei(root: Path, shared: Path) -> None:
    from medfl.federations.nuclei.demo import make_demo_nuclei
    from medfl.federations.nuclei.preparation import prepare

    make_demo_nuclei(shared / "nuclei_dsb2018", root / "raw" / "demo_nuclei")
    prepare(root / "raw" / "demo_nuclei", root)


def _demo_prior(images: Path, root: Path, *datalists: Path) -> None:
    """A MoCo-v2 ResNet-18 prior at ``root / PRIOR``: one epoch on 64 images (``datalists``: only those listed)."""
    run(["python", "data_preparation/pretrain_moco.py", "--images", images, "--output", root / PRIOR,
         "--depth", "18", "--image-size", str(SIZE), "--epochs", "1", "--batch-size", "32", "--queue-size", "256",
         "--bn-splits", "2", "--max-images", "64", *(["--datalists", *datalists] if datalists else [])])


def _isic2019(root: Path, shared: Path) -> None:
    from medfl.common.resnet import resnet_trunk

    ham = shared / "ham10000_mini"
    run(["python", "data_preparation/prepare_isic2019.py", "demo", "--ham-dir", ham,
         "--out", root / "fed_isic2019", "--image-size", str(SIZE)])
    _demo_prior(ham / "images", root)
    torch.save(resnet_trunk(18).state_dict(), root / TRUNK)


def _dermoscopy(root: Path, shared: Path) -> None:
    """The federation, and the FedMAS prior pre-trained on its pooled training images."""
    from medfl.federations.dermoscopy.preparation import prepare_federation

    federation = root / "prrfl_ham10000"
    prepare_federation(shared / "ham10000_mini", federation, image_size=SIZE, log=lambda message: None)
    _demo_prior(federation, root, *sorted(federation.glob("client*/train_client*.csv")))


def _medmnist(root: Path, shared: Path) -> None:
    from medfl.federations.medmnist.splits import prepare_client_splits

    (root / "medmnist").mkdir()
    (root / "medmnist" / "breastmnist.npz").symlink_to(shared / "medmnist" / "breastmnist.npz")
    prepare_client_splits(root / "medmnist" / "breastmnist.npz", root / "medmnist" / "splits_breastmnist",
                          num_clients=4, alpha=1000.0, seed=0, dataset="breastmnist")


@dataclass
class Federation:
    """Client names, how to build the demo ``DATASET_ROOT``, and each job's (server, train) overrides."""

    clients: Tuple[str, ...]
    build: Callable[[Path, Path], None]
    jobs: Dict[str, Tuple[dict, dict]] = field(default_factory=dict)


MEDMNIST_DEMO = {"dataset": "breastmnist", "data_root": "DATASET_ROOT/medmnist",
                 "datalist": "DATASET_ROOT/medmnist/splits_breastmnist"}
HARMOFL_PROSTATE_CLIENTS = ("client_BIDMC", "client_HK", "client_I2CVB", "client_ISBI", "client_ISBI_1_5",
                            "client_UCL")
FEDERATIONS = {
    "prostate": Federation(PROSTATE_CLIENTS, _prostate, {
        "fedavg_prostate": ({}, {"network": TINY_UNET, **PROSTATE_TRAIN}),
        "fedsm_prostate": ({}, {"network": TINY_UNET, "selector_network": SMALL_SELECTOR, **PROSTATE_TRAIN}),
        "harmofl_prostate_2d": ({}, {"network": TINY_UNET, **PROSTATE_TRAIN}),
    }),
    "harmofl_prostate": Federation(HARMOFL_PROSTATE_CLIENTS, _harmofl_prostate, {
        "harmofl_prostate": ({}, {"network": HARMOFL_UNET}),
    }),
    "camelyon17": Federation(tuple(f"hospital{i}" for i in range(1, 6)), _camelyon17, {
        "harmofl_camelyon17": ({}, {"network": HARMOFL_DENSENET, "data_root": "DATASET_ROOT/raw/demo_camelyon17"}),
    }),
    "nuclei": Federation(("brightfield_purple", "confocal_green", "dapi_blue", "widefield_grey"), _nuclei, {
        "harmofl_nuclei": ({}, {"network": HARMOFL_UNET, "data_root": "DATASET_ROOT/raw/demo_nuclei",
                                "patch_size": SIZE}),
    }),
    "isic2019": Federation(("center_1", "center_2", "center_3", "center_5"), _isic2019, {
        "fedmas_isic2019": (ISIC_TRUNK, {**ISIC_SMALL, "prior_checkpoint": f"DATASET_ROOT/{PRIOR}",
                                 "network": {"name": "free_head_resnet",
                                             "args": {"n_classes": 8, "prior_dim": 512, "depth": 18}}}),
        "fedavg_bsm_isic2019": (ISIC_TRUNK, ISIC_SMALL),
        "fedavg_isic2019": (ISIC_TRUNK, ISIC_SMALL),
    }),
    "dermoscopy": Federation(("clientA", "clientB", "clientC", "clientD"), _dermoscopy, {
        "prrfl_dermoscopy": ({}, PRRFL_SMALL),
        "fedavg_dermoscopy": ({}, PRRFL_SMALL),
        "fedmas_dermoscopy": ({}, FEDMAS_DERMOSCOPY_SMALL),
    }),
    "medmnist": Federation(("site-1", "site-2", "site-3", "site-4"), _medmnist, {
        "fedavg_medmnist": ({}, {**MEDMNIST_DEMO, "local_epochs": 1}),
        "fedavg_medmnist_scaleout": ({"fraction_fit": 0.5, "min_fit_clients": 1}, {**MEDMNIST_DEMO, "local_epochs": 1}),
    }),
}


def poc_variant(job: str, target: Path, clients: Tuple[str, ...], server: dict, train: dict) -> Path:
    """A 1-round, 1-thread variant of ``job`` (configuration only: the sites load the installed medfl); its
    ``meta.json`` asks for no more clients than the demo federation has (FLamby's ISIC2019 has 6 centres, the
    demo 4)."""
    variant = make_job_variant(job, target, {"num_rounds": 1, **server}, {"num_threads": 1, **train})
    assert not (variant / "app" / "custom").exists(), "the job carries no code"
    meta_file = variant / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["min_clients"] = min(meta.get("min_clients", len(clients)), len(clients))
    meta_file.write_text(json.dumps(meta, indent=2))
    return variant


def check_outputs(workspace: Path, clients: Tuple[str, ...]) -> None:
    """Round 0 was aggregated and checkpointed, and client metrics were streamed to the server."""
    app_server = workspace / "app_server"
    assert torch.load(app_server / "server_state.pt", weights_only=True)["completed_round"] == 0
    last = list(app_server.glob("last_*_model.pt"))
    assert last and all(torch.load(p, weights_only=True)["state_dict"] for p in last), sorted(app_server.iterdir())
    assert any((workspace / "tb_events" / client).is_dir() for client in clients), "client metrics reach the server"


# one job of each method, run through its recipe in PocEnv (test_recipes_poc.py) instead of submitted here
POC_ENV_JOBS = {
    "fedavg_prostate": "prostate",
    "fedsm_prostate": "prostate",
    "harmofl_prostate_2d": "prostate",
    "prrfl_dermoscopy": "dermoscopy",
    "fedmas_dermoscopy": "dermoscopy",
}
SUBMITTED = {name: {job: overrides for job, overrides in federation.jobs.items() if job not in POC_ENV_JOBS}
             for name, federation in FEDERATIONS.items()}


def test_every_job_has_a_federation():
    jobs = {p.name for p in (PROJECT_ROOT / "jobs").iterdir() if (p / "meta.json").is_file()}
    covered = {job for federation in FEDERATIONS.values() for job in federation.jobs}
    assert covered == jobs, f"jobs without a POC test: {sorted(jobs - covered)}; unknown: {sorted(covered - jobs)}"


@pytest.mark.parametrize("name", [name for name, jobs in SUBMITTED.items() if jobs])
def test_jobs_run_in_poc(name, tmp_path, shared_data):
    federation = FEDERATIONS[name]
    dataset_root = tmp_path / "data"
    dataset_root.mkdir()
    federation.build(dataset_root, shared_data)
    variants = {job: poc_variant(job, tmp_path / "jobs" / job, federation.clients, *overrides)
                for job, overrides in SUBMITTED[name].items()}
    with PocDeployment(tmp_path / "deploy", federation.clients, env={"DATASET_ROOT": str(dataset_root)}) as poc:
        for variant in variants.values():
            check_outputs(poc.submit_and_wait(variant), federation.clients)


def test_a_job_that_carries_its_code_runs_where_no_site_has_medfl(tmp_path, shared_data):
    """Way (b): the server and every site run a Python without medfl and allow no medfl class; the BYOC export of a
    job brings the code, and every participant runs medfl from the job's own copy."""
    federation = FEDERATIONS["prostate"]
    dataset_root = tmp_path / "data"
    dataset_root.mkdir()
    federation.build(dataset_root, shared_data)
    variant = poc_variant("fedavg_prostate", tmp_path / "variant", federation.clients,
                          *federation.jobs["fedavg_prostate"])
    job = export_byoc(variant, tmp_path / "byoc" / "fedavg_prostate")
    bare_python = python_without_medfl(tmp_path / "venv")
    env = {"DATASET_ROOT": str(dataset_root), "PATH": f"{bare_python}{os.pathsep}{os.environ['PATH']}"}
    with PocDeployment(tmp_path / "deploy", federation.clients, env=env, allow_installed_medfl=False) as poc:
        resources = (poc.kits / federation.clients[0] / "local" / "resources.json.default").read_text()
        assert "medfl." not in resources, "the sites allow no medfl class"
        workspace = poc.submit_and_wait(job)
        check_outputs(workspace, federation.clients)
        server_log = (workspace / "log.txt").read_text()
        assert "running medfl" in server_log and f"{os.sep}app_server{os.sep}custom{os.sep}medfl" in server_log, \
            "the server ran the job's own copy of medfl"
