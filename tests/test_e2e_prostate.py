"""End-to-end: the prostate jobs in the NVFlare simulator on the demo federation (2 rounds)."""

import json

import pytest
import torch
from conftest import PROSTATE_CLIENTS
from helpers import BIN, make_job_variant, run, run_simulator

from medfl.site import allow_medfl

pytestmark = pytest.mark.e2e


def _run(job, tmp_path, demo_prostate, **train):
    variant = make_job_variant(job, tmp_path / "jobs" / job, {"num_rounds": 2}, {"num_threads": 1, **train})
    workspace = tmp_path / "ws"
    run_simulator(variant, workspace, PROSTATE_CLIENTS, demo_prostate)
    return workspace, workspace / "server" / "simulate_job" / "app_server"


def _test_only(app_server, demo_prostate, *extra):
    return run(["python", "result_stat/prostate_2d_test_only.py", "--models_dir", app_server,
                "--dataset_base_dir", demo_prostate / "dataset_2D",
                "--datalist_json_path", demo_prostate / "datalist_2D", *extra]).stdout


def test_fedavg_prostate(tmp_path, demo_prostate):
    workspace, app_server = _run("fedavg_prostate", tmp_path, demo_prostate)
    for kind in ("best", "last"):
        state = torch.load(app_server / f"{kind}_global_model.pt", weights_only=True)
        assert state["state_dict"], f"{kind} global model is empty"
    assert torch.load(app_server / "server_state.pt", weights_only=True)["completed_round"] == 1
    for client in PROSTATE_CLIENTS:
        assert list((workspace / "server" / "simulate_job" / "tb_events" / client).glob("events.*")), client
    out = _test_only(app_server, demo_prostate)
    assert "mean test Dice of the best global model" in out
    plot = run(["python", "result_stat/plot_tensorboard_events.py", "--workspace", workspace]).stdout
    assert (workspace / "val_curves.png").is_file(), plot


def test_fedsm_prostate_headline(tmp_path, demo_prostate):
    workspace, app_server = _run("fedsm_prostate", tmp_path, demo_prostate)
    names = ["global", "selector"] + [f"personal_{c}" for c in PROSTATE_CLIENTS]
    for kind in ("best", "last"):
        for name in names:
            assert (app_server / f"{kind}_{name}_model.pt").is_file(), f"{kind} {name}"
    assert json.loads((app_server / "site_labels.json").read_text()) == {c: i for i, c in enumerate(PROSTATE_CLIENTS)}
    assert torch.load(app_server / "server_state.pt", weights_only=True)["extra"]["selector_moments"], \
        "the moment filters are configured, so the server must hold averaged moments"
    for client in PROSTATE_CLIENTS:  # round 1 loads the moments averaged after round 0
        assert "loaded synced Adam moments" in (workspace / client / "log.txt").read_text(), client
    super_out = _test_only(app_server, demo_prostate, "--select_threshold", "0.9")
    global_out = _test_only(app_server, demo_prostate, "--select_threshold", "1")
    assert "super" in super_out and "selector_accuracy" in super_out
    # threshold 1: the super model is the global model
    for line in global_out.splitlines():
        if line.startswith("client_"):
            fields = dict(f.strip().rsplit(" ", 1) for f in line.split(":", 1)[1].split("(")[0].split(","))
            assert fields["global"] == fields["super"], line


def test_fedsm_without_moment_filters(tmp_path, demo_prostate):
    """Removing the filter pair from config_fed_client.json turns the sync off and nothing else."""
    variant = make_job_variant("fedsm_prostate", tmp_path / "jobs" / "fedsm", {"num_rounds": 1}, {"num_threads": 1})
    client_config = variant / "app" / "config" / "config_fed_client.json"
    config = json.loads(client_config.read_text())
    config["task_data_filters"], config["task_result_filters"] = [], []
    client_config.write_text(json.dumps(config))
    run_simulator(variant, tmp_path / "ws", PROSTATE_CLIENTS, demo_prostate)
    state = torch.load(tmp_path / "ws" / "server" / "simulate_job" / "app_server" / "server_state.pt",
                       weights_only=True)
    assert state["extra"]["selector_moments"] == {}
    assert set(state["models"]) == {"global", "selector"} | {f"personal_{c}" for c in PROSTATE_CLIENTS}


def test_unreplaced_placeholder_gives_one_clear_error(tmp_path, demo_prostate):
    variant = make_job_variant("fedavg_prostate", tmp_path / "job", {"num_rounds": 1}, {"num_threads": 1})
    allow_medfl(tmp_path / "ws")
    result = run([BIN / "nvflare", "simulator", variant,
                  "-w", tmp_path / "ws", "-c", "client_MSD", "-t", "1"], env={"DATASET_ROOT": ""}, check=False,
                 timeout=300)
    logs = result.stdout + result.stderr
    assert "[client_MSD] DATASET_ROOT/dataset_2D: the path still contains the placeholder DATASET_ROOT" in logs, logs[-3000:]


def test_a_config_typo_stops_the_client_before_round_0(tmp_path, demo_prostate):
    """A typo written into a job by hand (not through job_variant, which checks) stops the run before round 0."""
    variant = make_job_variant("fedavg_prostate", tmp_path / "job", {"num_rounds": 1}, {"num_threads": 1})
    train = variant / "app" / "config" / "config_train.json"
    config = json.loads(train.read_text())
    config["local_epoch"] = config.pop("local_epochs")
    train.write_text(json.dumps(config))
    allow_medfl(tmp_path / "ws")
    result = run([BIN / "nvflare", "simulator", variant, "-w", tmp_path / "ws", "-c", "client_MSD", "-t", "1"],
                 env={"DATASET_ROOT": str(demo_prostate)}, check=False, timeout=300)
    logs = result.stdout + result.stderr
    assert "unknown key 'local_epoch' (did you mean 'local_epochs'?)" in logs, logs[-3000:]
    assert "[client_MSD]" in logs and "config_train.json" in logs
    assert not (tmp_path / "ws" / "server" / "simulate_job" / "app_server" / "last_global_model.pt").exists()
