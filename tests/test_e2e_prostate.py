"""End-to-end: the prostate jobs in the NVFlare simulator on the demo federation (32x32 slices).

FedSM runs here with the small selector; the job as shipped (the VGG-11 selector, 129 M weights) runs end to end in
the memory benchmark's test (``test_benchmarks.py``, ``make test-bench``), which measures that very run.
"""

import json
import re

import pytest
import torch
from bench_fedsm_prostate import remove_moment_filters
from conftest import PROSTATE_CLIENTS, PROSTATE_TRAIN, SMALL_SELECTOR
from helpers import BIN, make_job_variant, run, run_in_simenv, run_simulator

from nvflare.app_opt.tracking.tb.tb_receiver import TBAnalyticsReceiver

from medfl.common.curves import read_curves, read_mlflow_curves, read_run_curves
from medfl.recipes import recipe_for
from medfl.recipes.base import FED_EVENT_PREFIX
from medfl.site import allow_medfl

pytestmark = pytest.mark.e2e


def _test_only(app_server, demo_prostate, *extra):
    return run(["python", "result_stat/prostate_2d_test_only.py", "--models_dir", app_server,
                "--data_root", demo_prostate / "dataset_2D", "--datalist", demo_prostate / "datalist_2D", *extra]).stdout


def _pooled_test_slices(demo_prostate) -> int:
    return len(json.loads((demo_prostate / "datalist_2D" / "client_All.json").read_text())["testing"])


def test_fedavg_recipe_in_simenv_with_mlflow_and_tensorboard(tmp_path, demo_prostate):
    """The FedAvg recipe (what ``python -m medfl run fedavg_prostate --env sim`` runs) with both trackers on the
    server, so that one run feeds both stores; then the test and plot scripts on its workspace."""
    pytest.importorskip("mlflow", reason="mlflow is an optional extra: pip install 'medfl[tracking]'")
    recipe = recipe_for("fedavg_prostate", dataset_root=str(demo_prostate), tracking="mlflow", num_rounds=1,
                        num_threads=1, **PROSTATE_TRAIN)
    recipe._job.to_server(TBAnalyticsReceiver(events=[FED_EVENT_PREFIX + "analytix_log_stats"]), id="tb_receiver")
    workspace = run_in_simenv(recipe, tmp_path)
    run_dir = workspace / "server" / "simulate_job"
    app_server = run_dir / "app_server"
    for kind in ("best", "last"):
        assert torch.load(app_server / f"{kind}_global_model.pt", weights_only=True)["state_dict"], kind
    assert torch.load(app_server / "server_state.pt", weights_only=True)["completed_round"] == 0

    assert (run_dir / "mlflow.db").is_file()
    from_mlflow, from_tb = read_mlflow_curves(run_dir / "mlflow.db"), read_curves(run_dir / "tb_events")
    assert sorted(from_mlflow) == sorted(PROSTATE_CLIENTS) == sorted(from_tb)
    for site in PROSTATE_CLIENTS:
        assert set(from_mlflow[site]) == set(from_tb[site]) and "val/global" in from_tb[site], site
        for tag, (steps, values) in from_tb[site].items():
            assert from_mlflow[site][tag][0] == steps, (site, tag)
            assert from_mlflow[site][tag][1] == pytest.approx(values, rel=1e-6), (site, tag)
    assert read_run_curves(run_dir, "mlflow") == from_mlflow
    for tracking in ("tensorboard", "mlflow"):
        plot = run(["python", "result_stat/plot_tensorboard_events.py", "--workspace", workspace, "--tracking", tracking,
                    "--output", tmp_path / f"{tracking}.png"]).stdout
        assert (tmp_path / f"{tracking}.png").is_file(), plot

    out = _test_only(app_server, demo_prostate)
    total = _pooled_test_slices(demo_prostate)
    assert re.search(rf"^pooled test Dice of the best global model, mean over the {total} slices of client_All.json: "
                     r"global [0-9.]+$", out, re.M), out


def test_fedsm_without_moment_filters(tmp_path, demo_prostate):
    """Removing the filter pair from config_fed_client.json (as bench_fedsm_prostate.py does) turns the sync off and
    nothing else."""
    variant = make_job_variant("fedsm_prostate", tmp_path / "jobs" / "fedsm", {"num_rounds": 1},
                               {"num_threads": 1, "selector_network": SMALL_SELECTOR, **PROSTATE_TRAIN})
    client_config = variant / "app" / "config" / "config_fed_client.json"
    config = json.loads(client_config.read_text())
    remove_moment_filters(config)
    assert "moments" not in json.dumps(config) and "JoinLargeArrays" in json.dumps(config)
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
