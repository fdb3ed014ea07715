"""End-to-end: the HarmoFL jobs in the NVFlare simulator on their demo federations (2 rounds)."""

import json
import re

import pytest
import torch
from conftest import PROSTATE_CLIENTS as SLICE_CLIENTS
from helpers import as_longer_run, make_job_variant, run, run_simulator
from test_deploy_poc import TINY_UNET

from medfl.federations.camelyon17.demo import make_demo_camelyon17
from medfl.federations.camelyon17.preparation import prepare as prepare_camelyon17
from medfl.federations.nuclei.demo import make_demo_nuclei
from medfl.federations.nuclei.preparation import prepare as prepare_nuclei
from medfl.federations.prostate2d.demo import make_demo_federation
from medfl.federations.prostate_saml.preparation import HARMOFL_PROSTATE_SITES, client_name, prepare
from medfl.harmofl.amplitude_exchange import AMPLITUDE_FILE, AMPLITUDE_KEY, DIGEST_KEY, amplitude_digest

pytestmark = pytest.mark.e2e

PROSTATE_CLIENTS = [client_name(site) for site in HARMOFL_PROSTATE_SITES]
SMALL_UNET = {"name": "harmofl_unet", "args": {"in_channels": 3, "out_channels": 2, "features": [4, 8, 8, 16, 16, 4]}}
SMALL_DENSENET = {"name": "harmofl_densenet121",
                  "args": {"in_channels": 3, "out_channels": 2, "init_features": 8, "growth_rate": 4,
                           "block_config": [1, 1, 1, 1]}}
SIZE = 32
HOSPITALS = [f"hospital{i}" for i in range(1, 6)]
NUCLEI_SITES = ["brightfield_purple", "confocal_green", "dapi_blue", "widefield_grey"]


@pytest.fixture(scope="module")
def demo_harmofl_prostate(tmp_path_factory):
    """The six-site synthetic prostate federation, prepared at 32x32 with the original's slice-level split."""
    root = tmp_path_factory.mktemp("demo_harmofl_prostate")
    make_demo_federation(root / "raw", cases_per_site=6, seed=0, sites=HARMOFL_PROSTATE_SITES)
    prepare(root / "raw", root, size=SIZE)
    return root


def run_job(job, tmp_path, clients, data_dir, size, validation_pattern, image_channels=3, **train):
    """Run a 2-round variant with ``DATASET_ROOT=data_dir``; return :func:`check_run`'s output."""
    variant = make_job_variant(job, tmp_path / "job", {"num_rounds": 2}, {"num_threads": 1, **train})
    workspace = tmp_path / "ws"
    run_simulator(variant, workspace, clients, data_dir)
    return check_run(workspace, clients, data_dir, size, validation_pattern, image_channels)


def check_run(workspace, clients, data_dir, size, validation_pattern, image_channels):
    """Check a 2-round run's models, the amplitude exchange of ``(image_channels, size, size)`` spectra on every
    client and TensorBoard events; return the output of the test script."""
    app_server = workspace / "server" / "simulate_job" / "app_server"
    for kind in ("best", "last"):
        assert torch.load(app_server / f"{kind}_global_model.pt", weights_only=True)["state_dict"], kind
    state = torch.load(app_server / "server_state.pt", weights_only=True)
    assert state["completed_round"] == 1

    # the exchange: one (C, H, W) reference, saved and in the resume state, frozen by every client
    exchange = torch.load(app_server / AMPLITUDE_FILE, weights_only=True)
    reference = exchange[AMPLITUDE_KEY]
    assert reference.shape == (image_channels, size, size) and sorted(exchange["clients"]) == sorted(clients)
    assert torch.equal(state["extra"][AMPLITUDE_KEY], reference)
    assert exchange[DIGEST_KEY] == amplitude_digest(reference.numpy())
    frozen = {}
    for client in clients:
        log = (workspace / client / "log.txt").read_text()
        frozen[client] = re.findall(r"froze the amplitude reference sha256=(\w+)", log)
        assert re.search(rf"sending the mean amplitude \({image_channels}, {size}, {size}\)", log), client
        assert re.search(rf"round 1 validation of received models: {validation_pattern}", log), client
        assert list((workspace / "server" / "simulate_job" / "tb_events" / client).glob("events.*")), client
    assert all(digests == [exchange[DIGEST_KEY]] for digests in frozen.values()), frozen
    return run(["python", "result_stat/harmofl_test_only.py", "--models_dir", app_server],
               env={"DATASET_ROOT": str(data_dir)}).stdout


def test_harmofl_prostate(tmp_path, demo_harmofl_prostate):
    out = run_job("harmofl_prostate", tmp_path, PROSTATE_CLIENTS, demo_harmofl_prostate, SIZE,
                  r"global=\S+, dice_bg_fg=\S+, dice_fg=", network=SMALL_UNET)
    for client in PROSTATE_CLIENTS:
        assert re.search(rf"^{client}: dice_bg_fg [0-9.]+, dice_fg [0-9.]+ \(\d+ samples\)$", out, re.M), out
    assert "mean over 6 sites, best global model: dice_bg_fg" in out


def test_harmofl_prostate_2d_from_the_command_line(tmp_path, demo_prostate):
    """HarmoFL on the FedSM / FedAvg slices (one channel) with FedAvg's client recipe and a light UNet, run as a user
    runs a recipe: ``python -m medfl run harmofl_prostate_2d --env sim``."""
    train = {"num_threads": 1, "network": TINY_UNET, "image_size": SIZE}
    out = run(["python", "-m", "medfl", "run", "harmofl_prostate_2d", "--env", "sim", "--rounds", "2",
               "--data-root", demo_prostate, "--workspace", tmp_path,
               "--set", *(f"{k}={json.dumps(v)}" for k, v in train.items())]).stdout
    workspace = tmp_path / "harmofl_prostate_2d"
    assert f"results: {workspace}" in out
    allowed = json.loads((workspace / "local" / "resources.json").read_text())["class_allow_list"]
    assert "medfl." in allowed, "the simulator's workspace got medfl's site policy"
    out = check_run(workspace, SLICE_CLIENTS, demo_prostate, SIZE, r"global=[0-9.]+\n", image_channels=1)
    for client in SLICE_CLIENTS:
        assert re.search(rf"^{client}: dice_fg [0-9.]+ \(\d+ samples\)$", out, re.M), out
    assert "mean over 3 sites, best global model: dice_fg" in out


def test_harmofl_camelyon17(tmp_path):
    """Five hospitals of synthetic 96x96 H&E patches (WILDS layout), a light DenseNet through the variant."""
    make_demo_camelyon17(tmp_path / "raw" / "demo_camelyon17", slides_per_hospital=4, patches_per_slide=6)
    prepare_camelyon17(tmp_path / "raw" / "demo_camelyon17", tmp_path)
    out = run_job("harmofl_camelyon17", tmp_path, HOSPITALS, tmp_path, 96, r"global=[0-9.]+\n",
                  network=SMALL_DENSENET, data_root="DATASET_ROOT/raw/demo_camelyon17")
    for client in HOSPITALS:
        assert re.search(rf"^{client}: accuracy [0-9.]+, balanced_accuracy .*\(\d+ samples\)$", out, re.M), out
    assert "mean over 5 sites, best global model: accuracy" in out


def test_harmofl_nuclei(tmp_path, shared_data):
    """Four sites tiled from the real DSB2018 image in different acquisition styles, 32x32 crops and tiles."""
    make_demo_nuclei(shared_data / "nuclei_dsb2018", tmp_path / "raw" / "demo_nuclei")
    prepare_nuclei(tmp_path / "raw" / "demo_nuclei", tmp_path)
    client_state = str(tmp_path / "client_state")  # outside the simulator's workspace, which it empties at start
    out = run_job("harmofl_nuclei", tmp_path, NUCLEI_SITES, tmp_path, SIZE, r"global=\S+, dice_bg_fg=\S+, dice_fg=",
                  network=SMALL_UNET, data_root="DATASET_ROOT/raw/demo_nuclei", patch_size=SIZE, state_dir=client_state)
    for client in NUCLEI_SITES:
        assert re.search(rf"^{client}: dice_bg_fg [0-9.]+, dice_fg [0-9.]+ \(\d+ samples\)$", out, re.M), out


    # resume: the stored reference is broadcast again (not recomputed) and training goes on from round 2
    state_file = tmp_path / "ws" / "server" / "simulate_job" / "app_server" / "server_state.pt"
    digest = torch.load(state_file.parent / AMPLITUDE_FILE, weights_only=True)[DIGEST_KEY]
    as_longer_run(state_file, 3)  # a 3-round run stopped after its second round
    resumed = make_job_variant("harmofl_nuclei", tmp_path / "resumed", {"num_rounds": 3, "resume_from": str(state_file)},
                               {"num_threads": 1, "network": SMALL_UNET, "data_root": "DATASET_ROOT/raw/demo_nuclei",
                                "patch_size": SIZE, "state_dir": client_state})
    run_simulator(resumed, tmp_path / "ws2", NUCLEI_SITES, tmp_path)
    server_log = (tmp_path / "ws2" / "server" / "log.txt").read_text()
    assert "continuing at round 3/3" in server_log and "Sending task harmofl_amplitude" not in server_log
    for client in NUCLEI_SITES:
        before, after = ((tmp_path / ws / client / "log.txt").read_text() for ws in ("ws", "ws2"))
        assert re.findall(r"froze the amplitude reference sha256=(\w+)", after) == [digest], client
        assert "restored the state saved after round 1" in after, client
        validated = [re.search(r"round 2 validation of received models: (.*)", log)[1] for log in (before, after)]
        assert validated[0] == validated[1], (client, validated)
