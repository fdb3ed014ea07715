"""Faults in a POC deployment: one site goes down (all its processes killed) during round 2 of a 3-round FedAvg run.

The workflow's ``min_clients`` decides what happens: ``2`` finishes the run with the two remaining sites, ``0``
(every site) stops it with a message naming the dead one. NVFlare drops a site whose heartbeat stops after the
server's ``heart_beat_timeout`` (its local ``resources.json``, 600 s by default), then deems its job dead after the
dead-client grace period (``NVFLARE_DEAD_CLIENT_GRACE_PERIOD``, 60 s); both are shortened here. (A site whose job
process alone crashes reports the failure itself, and NVFlare 2.9 then fails the whole job whatever the settings.)
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from conftest import PROSTATE_CLIENTS, PROSTATE_TRAIN
from helpers import POC_SERVER, PocDeployment, make_job_variant

pytestmark = pytest.mark.deploy

VICTIM = "client_MSD"
HEART_BEAT_TIMEOUT = 10  # seconds
FAST_DEAD_CLIENT_DETECTION = {"NVFLARE_DEAD_CLIENT_GRACE_PERIOD": "5", "NVFLARE_DEAD_CLIENT_CHECK_LEAD_TIME": "5"}
TINY_UNET = {"name": "unet", "args": {"in_channels": 1, "out_channels": 1, "channels": [4, 8], "strides": [2],
                                      "num_res_units": 0}}
LOCAL_EPOCHS = 20  # rounds of a few seconds, so that the site dies while round 2 trains


def wait_for_text(path: Path, text: str, timeout: float = 300) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        content = path.read_text() if path.is_file() else ""
        if text in content:
            return content
        time.sleep(0.5)
    raise AssertionError(f"'{text}' not in {path} after {timeout} s")


def kill_processes_of(kit_dir: Path) -> None:
    """SIGKILL every process started from the startup kit ``kit_dir`` (its restart loop, the parent, the job)."""
    needle = str(kit_dir).encode()
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and needle in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            continue
    assert pids, f"no process of {kit_dir}"
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def submit(poc: PocDeployment, job: Path) -> str:
    out = poc.nvflare("job", "submit", "-j", job).stdout
    return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("job_id:"))


def run_with_a_dead_site(poc: PocDeployment, job: Path) -> tuple:
    """Submit ``job``, kill the victim site once round 2 started; return (final status, server log, app_server)."""
    job_id = submit(poc, job)
    wait_for_text(poc.kits / POC_SERVER / job_id / "log.txt", "round 2/3 started")
    wait_for_text(poc.kits / VICTIM / job_id / "log.txt", "round 1 validation of received models")
    kill_processes_of(poc.kits / VICTIM)
    status = poc.nvflare("job", "wait", job_id, "--timeout", "300", timeout=360, check=False)
    poc.nvflare("job", "download", job_id, "-o", poc.root / "download" / job_id)
    workspace = poc.root / "download" / job_id / job_id / "workspace"
    return status.stdout + status.stderr, (workspace / "log.txt").read_text(), workspace / "app_server"


def test_a_dead_site_continues_or_stops_as_configured(tmp_path, demo_prostate):
    jobs = {}
    for min_clients in (2, 0):
        job = make_job_variant("fedavg_prostate", tmp_path / f"min{min_clients}",
                               {"num_rounds": 3, "min_clients": min_clients},
                               {"num_threads": 1, "network": TINY_UNET, "local_epochs": LOCAL_EPOCHS,
                                **PROSTATE_TRAIN})
        meta = json.loads((job / "meta.json").read_text())
        meta["min_clients"] = 2  # NVFlare itself aborts a job when fewer sites than this are alive
        (job / "meta.json").write_text(json.dumps(meta))
        jobs[min_clients] = job
    env = {"DATASET_ROOT": str(demo_prostate), **FAST_DEAD_CLIENT_DETECTION}
    with PocDeployment(tmp_path / "deploy", PROSTATE_CLIENTS, env=env, heart_beat_timeout=HEART_BEAT_TIMEOUT) as poc:
        status, log, app_server = run_with_a_dead_site(poc, jobs[2])
        assert "FINISHED:COMPLETED" in status, status
        assert f"continuing with 2 of 3 clients (min_clients=2); no result from ['{VICTIM}']" in log, log[-3000:]
        assert torch.load(app_server / "server_state.pt", weights_only=True)["completed_round"] == 2

        poc.nvflare("poc", "start", "-p", VICTIM)  # the site comes back for the second job
        time.sleep(HEART_BEAT_TIMEOUT)
        status, log, app_server = run_with_a_dead_site(poc, jobs[0])
        assert "FINISHED:COMPLETED" not in status, status
        assert f"task 'train' got 2 results, needs 3; no result from ['{VICTIM}'] (disconnected: ['{VICTIM}'])" \
            in log, log[-3000:]
        # killed in round 2: round 1 was the last one aggregated
        assert torch.load(app_server / "server_state.pt", weights_only=True)["completed_round"] == 0
