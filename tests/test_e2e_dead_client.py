"""A client process killed mid-round in the NVFlare simulator: the run goes on without it within ``client_timeout``.

NVFlare's simulator never tells the server that a client died (no heartbeats, no dead-job report), and a task
without a timeout waited for it forever (issue 19.7: over 7 minutes, no end). medfl's clients send a heartbeat
every 10 s; the server gives up on a client that holds a task and stayed silent for ``client_timeout`` seconds.
Here FedAvg runs 3 rounds with ``min_clients`` 2; ``client_MSD``'s worker process is SIGKILLed while it trains in
round 2. (The same silence with ``min_clients`` 0 stops the run naming the client:
``test_controller_faults.py::test_a_silent_client_stops_the_run_naming_it_when_every_client_is_needed``.)
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import torch
from conftest import PROSTATE_CLIENTS
from helpers import BIN, PROJECT_ROOT, make_job_variant

from medfl.job_config import check_job
from medfl.site import allow_medfl

pytestmark = pytest.mark.e2e

VICTIM = "client_MSD"
CLIENT_TIMEOUT = 30  # seconds: the shortest allowed (3 heartbeat intervals)
MARGIN = 90  # seconds for the rest of the run once the victim is given up (round 3 and the final validation)
TINY_UNET = {"name": "unet", "args": {"in_channels": 1, "out_channels": 1, "channels": [4, 8], "strides": [2],
                                      "num_res_units": 0}}
LOCAL_EPOCHS = 20  # rounds of a few seconds, so that the kill lands while round 2 trains


def wait_for_text(path: Path, text: str, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.is_file() and text in path.read_text():
            return
        assert process.poll() is None, f"the simulator ended before '{text}' appeared in {path}"
        time.sleep(0.5)
    raise AssertionError(f"'{text}' not in {path} after {timeout} s")


def worker_of(client: str, workspace: Path) -> psutil.Process:
    """The simulator's worker process of ``client`` (its command line names the client and its workspace)."""
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if ("nvflare.private.fed.app.simulator.simulator_worker" in cmdline and str(workspace / client) in cmdline
                and client in cmdline):
            return process
    raise AssertionError(f"no simulator worker of {client} under {workspace}")


def test_a_killed_client_is_given_up_within_client_timeout_and_the_run_finishes(tmp_path, demo_prostate):
    job = make_job_variant("fedavg_prostate", tmp_path / "job", {"num_rounds": 3, "min_clients": 2},
                           {"num_threads": 1, "network": TINY_UNET, "local_epochs": LOCAL_EPOCHS})
    server_config = job / "app" / "config" / "config_fed_server.json"
    config = json.loads(server_config.read_text())
    config["workflows"][0]["args"]["client_timeout"] = CLIENT_TIMEOUT
    server_config.write_text(json.dumps(config, indent=2))
    check_job(job)
    workspace = tmp_path / "ws"
    allow_medfl(workspace)
    with open(tmp_path / "simulator.log", "w") as log:
        simulator = subprocess.Popen(
            [BIN / "nvflare", "simulator", job, "-w", workspace, "-c", ",".join(PROSTATE_CLIENTS), "-t",
             str(len(PROSTATE_CLIENTS))], cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
            env={**psutil.Process().environ(), "DATASET_ROOT": str(demo_prostate),
                 "PATH": f"{BIN}:{psutil.Process().environ().get('PATH', '')}"})
        try:
            server_log = workspace / "server" / "log.txt"
            wait_for_text(server_log, "round 2/3 started", simulator)
            wait_for_text(workspace / VICTIM / "log.txt", "round 1 validation of received models", simulator)
            worker_of(VICTIM, workspace).kill()
            killed = time.monotonic()
            simulator.wait(timeout=CLIENT_TIMEOUT + MARGIN)
            took = time.monotonic() - killed
        finally:
            if simulator.poll() is None:
                simulator.kill()
    text = server_log.read_text()
    assert f"no sign of life from ['{VICTIM}'] for {CLIENT_TIMEOUT} s (client_timeout) while holding task 'train'" \
        in text, text[-3000:]
    assert (f"continuing with 2 of 3 clients (min_clients=2); no result from ['{VICTIM}'] (disconnected: []; no sign "
            f"of life for {CLIENT_TIMEOUT} s: ['{VICTIM}'])") in text, text[-3000:]
    assert f"not sending task 'train' to clients deemed dead earlier in this run ['{VICTIM}']" in text
    assert "round 3/3 finished with 2 clients" in text, text[-3000:]
    assert CLIENT_TIMEOUT < took < CLIENT_TIMEOUT + MARGIN, took
    state = torch.load(workspace / "server" / "simulate_job" / "app_server" / "server_state.pt", weights_only=True)
    assert state["completed_round"] == 2
