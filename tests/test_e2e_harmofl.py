"""End-to-end: the HarmoFL jobs in the NVFlare simulator on their demo federations (2 rounds)."""

import re

import pytest
import torch

from helpers import make_job_variant, run, run_simulator
from make_demo_prostate import make_demo_federation
from medfl.harmofl.amplitude_exchange import AMPLITUDE_FILE, AMPLITUDE_KEY, DIGEST_KEY, amplitude_digest
from prepare_harmofl_prostate import HARMOFL_PROSTATE_SITES, client_name, prepare

pytestmark = pytest.mark.e2e

PROSTATE_CLIENTS = [client_name(site) for site in HARMOFL_PROSTATE_SITES]
SMALL_UNET = {"name": "harmofl_unet", "args": {"in_channels": 3, "out_channels": 2, "features": [4, 8, 8, 16, 16, 4]}}
SIZE = 32


@pytest.fixture(scope="module")
def demo_harmofl_prostate(tmp_path_factory):
    """The six-site synthetic prostate federation, prepared at 32x32 with the original's slice-level split."""
    root = tmp_path_factory.mktemp("demo_harmofl_prostate")
    make_demo_federation(root / "raw", cases_per_site=6, seed=0, sites=HARMOFL_PROSTATE_SITES)
    prepare(root / "raw", root, size=SIZE)
    return root


def test_harmofl_prostate(tmp_path, demo_harmofl_prostate):
    variant = make_job_variant("harmofl_prostate", tmp_path / "job", {"num_rounds": 2},
                               {"num_threads": 1, "network": SMALL_UNET})
    workspace = tmp_path / "ws"
    run_simulator(variant, workspace, PROSTATE_CLIENTS, demo_harmofl_prostate)
    app_server = workspace / "server" / "simulate_job" / "app_server"
    for kind in ("best", "last"):
        assert torch.load(app_server / f"{kind}_global_model.pt")["state_dict"], kind
    state = torch.load(app_server / "server_state.pt")
    assert state["completed_round"] == 1

    # the exchange: one (C, H, W) reference, saved and in the resume state, frozen by every client
    exchange = torch.load(app_server / AMPLITUDE_FILE)
    reference = exchange[AMPLITUDE_KEY]
    assert reference.shape == (3, SIZE, SIZE) and sorted(exchange["clients"]) == sorted(PROSTATE_CLIENTS)
    assert torch.equal(state["extra"][AMPLITUDE_KEY], reference)
    assert exchange[DIGEST_KEY] == amplitude_digest(reference.numpy())
    frozen = {}
    for client in PROSTATE_CLIENTS:
        log = (workspace / client / "log.txt").read_text()
        frozen[client] = re.findall(r"froze the amplitude reference sha256=(\w+)", log)
        assert re.search(rf"sending the mean amplitude \(3, {SIZE}, {SIZE}\)", log), client
        assert re.search(r"round 1 validation of received models: global=\S+, dice_bg_fg=\S+, dice_fg=", log), client
        assert list((workspace / "server" / "simulate_job" / "tb_events" / client).glob("events.*")), client
    assert all(digests == [exchange[DIGEST_KEY]] for digests in frozen.values()), frozen

    out = run(["python", "result_stat/harmofl_test_only.py", "--models_dir", app_server],
              env={"DATASET_ROOT": str(demo_harmofl_prostate)}).stdout
    for client in PROSTATE_CLIENTS:
        assert re.search(rf"^{client}: dice_bg_fg [0-9.]+, dice_fg [0-9.]+ \(\d+ samples\)$", out, re.M), out
    assert "mean over 6 sites, best global model: dice_bg_fg" in out
