"""End-to-end: the prostate jobs in the NVFlare simulator on the demo federation (2 rounds, 32x32 slices).

``test_fedsm_prostate_default`` runs the job as shipped (the VGG-11 selector, full-batch selector steps, the
moment filters) except for the number of rounds and the image size; the other FedSM run uses the small selector.
"""

import json
import re

import pytest
import torch
from conftest import PROSTATE_CLIENTS, PROSTATE_TRAIN, SMALL_SELECTOR
from helpers import BIN, make_job_variant, run, run_simulator

from medfl.site import allow_medfl

pytestmark = pytest.mark.e2e


def _run(job, tmp_path, demo_prostate, **train):
    variant = make_job_variant(job, tmp_path / "jobs" / job, {"num_rounds": 2},
                               {"num_threads": 1, **PROSTATE_TRAIN, **train})
    workspace = tmp_path / "ws"
    run_simulator(variant, workspace, PROSTATE_CLIENTS, demo_prostate)
    return workspace, workspace / "server" / "simulate_job" / "app_server"


def _test_only(app_server, demo_prostate, *extra):
    return run(["python", "result_stat/prostate_2d_test_only.py", "--models_dir", app_server,
                "--data_root", demo_prostate / "dataset_2D", "--datalist", demo_prostate / "datalist_2D", *extra]).stdout


def _pooled_test_slices(demo_prostate) -> int:
    return len(json.loads((demo_prostate / "datalist_2D" / "client_All.json").read_text())["testing"])


def test_fedavg_prostate(tmp_path, demo_prostate):
    workspace, app_server = _run("fedavg_prostate", tmp_path, demo_prostate)
    for kind in ("best", "last"):
        state = torch.load(app_server / f"{kind}_global_model.pt", weights_only=True)
        assert state["state_dict"], f"{kind} global model is empty"
    assert torch.load(app_server / "server_state.pt", weights_only=True)["completed_round"] == 1
    for client in PROSTATE_CLIENTS:
        assert list((workspace / "server" / "simulate_job" / "tb_events" / client).glob("events.*")), client
    out = _test_only(app_server, demo_prostate)
    total = _pooled_test_slices(demo_prostate)
    assert re.search(rf"^pooled test Dice of the best global model, mean over the {total} slices of client_All.json: "
                     r"global [0-9.]+$", out, re.M), out
    plot = run(["python", "result_stat/plot_tensorboard_events.py", "--workspace", workspace]).stdout
    assert (workspace / "val_curves.png").is_file(), plot


def test_fedsm_prostate_default(tmp_path, demo_prostate):
    """The shipped FedSM job (VGG-11 selector) at 32x32 for 2 rounds."""
    workspace, app_server = _run("fedsm_prostate", tmp_path, demo_prostate)
    names = ["global", "selector"] + [f"personal_{c}" for c in PROSTATE_CLIENTS]
    for kind in ("best", "last"):
        for name in names:
            assert (app_server / f"{kind}_{name}_model.pt").is_file(), f"{kind} {name}"
    assert json.loads((app_server / "site_labels.json").read_text()) == {c: i for i, c in enumerate(PROSTATE_CLIENTS)}
    state = torch.load(app_server / "server_state.pt", weights_only=True)
    selector = state["models"]["selector"]
    assert "classifier.0.weight" in selector and tuple(selector["classifier.0.weight"].shape) == (4096, 25088)
    moments = state["extra"]["selector_moments"]
    assert moments, "the moment filters are configured, so the server must hold averaged moments"
    trained = {k for k in selector if k.endswith(("weight", "bias"))}
    assert set(moments) == {f"{k}.{m}" for k in trained for m in ("exp_avg", "exp_avg_sq")}, "no 'step' travels"
    for client in PROSTATE_CLIENTS:
        log = (workspace / client / "log.txt").read_text()
        assert "loaded synced Adam moments for 22 selector parameters" in log, client  # round 1: round 0's average
        assert len(re.findall(r"selector epoch 1/1 \(one step\)", log)) == 2, client
    total = _pooled_test_slices(demo_prostate)
    super_out = _test_only(app_server, demo_prostate, "--select_threshold", "0.9")
    assert re.search(rf"^routing \(top selector probability > 0.9\): \d+ of {total} test slices to personalised "
                     r"models \(", super_out, re.M), super_out
    assert re.search(r"^pooled test Dice of the best super model \(threshold 0.9\) and global model, mean over "
                     rf"the {total} slices of client_All.json: global [0-9.]+, super [0-9.]+$", super_out, re.M)
    for client in PROSTATE_CLIENTS:
        assert re.search(rf"^{client}: global [0-9.]+, super [0-9.]+, selector_accuracy [0-9.]+ \(\d+ slices\)$",
                         super_out, re.M), super_out
    global_out = _test_only(app_server, demo_prostate, "--select_threshold", "1")
    assert f"0 of {total} test slices to personalised models (global {total})" in global_out, global_out
    pooled = re.search(r"global ([0-9.]+), super ([0-9.]+)$", global_out, re.M)
    assert pooled[1] == pooled[2], "threshold 1: the super model is the global model"


def test_fedsm_without_moment_filters(tmp_path, demo_prostate):
    """Removing the filter pair from config_fed_client.json turns the sync off and nothing else."""
    variant = make_job_variant("fedsm_prostate", tmp_path / "jobs" / "fedsm", {"num_rounds": 1},
                               {"num_threads": 1, "selector_network": SMALL_SELECTOR, **PROSTATE_TRAIN})
    client_config = variant / "app" / "config" / "config_fed_client.json"
    config = json.loads(client_config.read_text())
    config["task_data_filters"], config["task_result_filters"] = [], []
    client_config.write_text(json.dumps(config))
    run_simulator(variant, tmp_path / "ws", PROSTATE_CLIENTS, demo_prostate)
    state = torch.load(tmp_path / "ws" / "server" / "simulate_job" / "app_server" / "server_state.pt",
                       weights_only=True)
    assert state["extra"]["selector_moments"] == {}
    assert set(state["models"]) == {"global", "selector"} | {f"personal_{c}" for c in PROSTATE_CLIENTS}
    assert "0.conv.weight" in state["models"]["selector"], "the small selector, set on both sides"


def test_unreplaced_placeholder_gives_one_clear_error(tmp_path, demo_prostate):
    variant = make_job_variant("fedavg_prostate", tmp_path / "job", {"num_rounds": 1},
                               {"num_threads": 1, **PROSTATE_TRAIN})
    allow_medfl(tmp_path / "ws")
    result = run([BIN / "nvflare", "simulator", variant,
                  "-w", tmp_path / "ws", "-c", "client_MSD", "-t", "1"], env={"DATASET_ROOT": ""}, check=False,
                 timeout=300)
    logs = result.stdout + result.stderr
    assert "[client_MSD] DATASET_ROOT/dataset_2D: the path still contains the placeholder DATASET_ROOT" in logs, logs[-3000:]


def test_a_config_typo_stops_the_client_before_round_0(tmp_path, demo_prostate):
    """A typo written into a job by hand (not through job_variant, which checks) stops the run before round 0."""
    variant = make_job_variant("fedavg_prostate", tmp_path / "job", {"num_rounds": 1},
                               {"num_threads": 1, **PROSTATE_TRAIN})
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
