"""``benchmarks/compare_dermoscopy.py``. End-to-end (``bench``): on two HAM10000-mini clients for one round, with a
tiny VGG and a one-epoch prior, every method has a row in the macro-F1 and the balanced-accuracy tables, FedMAS's
and BSM-FL's with finite test scores per client, and the prior is made once per work folder. Unit tests: the
federated rows, the ablations' job variants, FedMAS's overrides."""

from __future__ import annotations

import json
import math

import compare_dermoscopy
import pytest
from helpers import PROJECT_ROOT

from medfl.variant import make_variant

CLIENTS = ["clientA", "clientB"]
TRAIN = {"image_size": 32, "local_epochs": 1,
         "network": {"name": "medfl.federations.dermoscopy.networks:vgg16_slim",
                     "args": {"blocks": [[4], [4], [4], [4], [4]], "hidden_features": 4}}}
METHODS = {"PRR-FL", "FedMAS", "BSM-FL", "FedAvg", "local only", "centralised"}


@pytest.mark.bench  # make test-bench
def test_comparison_has_fedmas_and_bsm_fl_rows_with_finite_scores(tmp_path, capsys, shared_data):
    compare_dermoscopy.demo_dermoscopy(tmp_path / "data", TRAIN["image_size"], shared_data)  # the command reuses it
    args = ["--work", str(tmp_path), "--clients", *CLIENTS, "--rounds", "1", "--seeds", "0", "--prior-epochs", "1",
            "--train", json.dumps(TRAIN)]
    scores = compare_dermoscopy.main(args)
    assert set(scores) == {"macro_f1", "balanced_accuracy"}
    for metric, table in scores.items():
        assert set(table) == METHODS, metric
        for method, runs in table.items():
            (run,) = runs
            assert set(run) == set(CLIENTS) and all(math.isfinite(v) and 0 <= v <= 1 for v in run.values()), run
    assert (tmp_path / "seed0" / "bsm_fl_dermoscopy").is_dir() and (tmp_path / "seed0" / "fedavg_dermoscopy").is_dir()
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-4].startswith("BSM-FL mean test macro-F1 - FedAvg: ")
    assert lines[-3].startswith("FedMAS mean test balanced accuracy - BSM-FL: ")
    assert lines[-2].startswith("FedMAS mean test macro-F1 - FedAvg: ")
    assert lines[-1].startswith("PRR-FL mean test macro-F1 - FedAvg: ")
    results = tmp_path / "results"
    for name, metric in (("dermoscopy_results", "macro-F1"), ("dermoscopy_balanced_accuracy_results",
                                                              "balanced accuracy")):
        table = (results / f"{name}.md").read_text()
        assert f"test {metric} (PRR-FL" in table and "FedMAS prior: MoCo-v2 ResNet-18, 1 epochs" in table
        assert "| FedMAS |" in table and "| BSM-FL |" in table
        assert (results / f"{name}.csv").read_text().startswith("method,site,mean,std,seeds")
    assert (tmp_path / "results" / "dermoscopy_validation.png").read_bytes()[:4] == b"\x89PNG"
    (prior,) = (tmp_path / "prior").iterdir()
    modified = prior.stat().st_mtime_ns
    data_root = tmp_path / "data" / "prrfl_ham10000"
    assert compare_dermoscopy.demo_prior(tmp_path, data_root, CLIENTS, 32, 1) == prior  # cached, not trained again
    assert prior.stat().st_mtime_ns == modified


def test_fedmas_overrides_keep_the_comparison_network():
    overrides = compare_dermoscopy.fedmas_train(TRAIN, PROJECT_ROOT / "prior.pth.tar")
    assert overrides["network"] == {"name": compare_dermoscopy.FEDMAS_NETWORK,
                                    "args": {**TRAIN["network"]["args"], "prior_dim": 512}}
    assert overrides["prior_checkpoint"].endswith("prior.pth.tar") and overrides["image_size"] == 32
    with pytest.raises(ValueError, match="must be a vgg16_slim"):
        compare_dermoscopy.fedmas_train({"network": {"name": "unet"}}, PROJECT_ROOT / "prior.pth.tar")


PRIOR = PROJECT_ROOT / "prior.pth.tar"


def test_without_ablations_the_rows_and_their_overrides_are_the_methods():
    rows = compare_dermoscopy.fl_jobs(ablations=False)
    assert [(fl.method, fl.job, fl.folder) for fl in rows] == [
        ("PRR-FL", "prrfl_dermoscopy", "prrfl_dermoscopy"), ("FedMAS", "fedmas_dermoscopy", "fedmas_dermoscopy"),
        ("BSM-FL", "fedavg_dermoscopy", "bsm_fl_dermoscopy"), ("FedAvg", "fedavg_dermoscopy", "fedavg_dermoscopy")]
    overrides = {fl.method: compare_dermoscopy.job_overrides(fl, 3, TRAIN, PRIOR) for fl in rows}
    assert all(server == {"num_rounds": 3} for server, _ in overrides.values())
    assert overrides["PRR-FL"][1] == overrides["FedAvg"][1] == TRAIN
    assert overrides["BSM-FL"][1] == {**TRAIN, "loss": "bsm"}
    assert overrides["FedMAS"][1] == compare_dermoscopy.fedmas_train(TRAIN, PRIOR)


def workflow_args(variant):
    (workflow,) = json.loads((variant / "app" / "config" / "config_fed_server.json").read_text())["workflows"]
    return workflow["args"]


def test_ablations_run_their_methods_jobs_with_one_setting_changed(tmp_path):
    """Each ablation is its method's job in a folder of its own, with the comparison's budget and one setting
    changed; its variant passes the jobs' typed settings."""
    rows = compare_dermoscopy.fl_jobs(ablations=True)
    assert len({fl.folder for fl in rows}) == len(rows)
    ablations = {fl.method: fl for fl in rows if fl.ablation_of}
    assert set(ablations) == {"PRR-FL (mean aggregation)", "PRR-FL (no DET)", "FedMAS (sample weights)"}
    methods = {fl.method: fl for fl in rows if not fl.ablation_of}
    changed = {"PRR-FL (mean aggregation)": ("server", "aggregation", "mean"),
               "PRR-FL (no DET)": ("train", "transfer", "none"),
               "FedMAS (sample weights)": ("server", "aggregation", "avg")}
    for method, fl in ablations.items():
        base = methods[fl.ablation_of]
        assert fl.job == base.job
        server, train = compare_dermoscopy.job_overrides(fl, 3, TRAIN, PRIOR)
        base_server, base_train = compare_dermoscopy.job_overrides(base, 3, TRAIN, PRIOR)
        variant = make_variant(PROJECT_ROOT / "jobs" / fl.job, tmp_path / fl.folder, server, train)
        side, key, value = changed[method]
        if side == "server":
            assert server == {**base_server, key: value} and train == base_train
            assert workflow_args(variant)[key] == value
        else:
            assert train == {**base_train, key: value} and server == base_server
            assert json.loads((variant / "app" / "config" / "config_train.json").read_text())[key] == value
        assert workflow_args(variant)["num_rounds"] == 3
