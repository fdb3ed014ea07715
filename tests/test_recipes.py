"""The recipes (medfl.recipes) are the one source of the committed jobs: each job folder is exactly its recipe
exported; settings given to a recipe land on the side(s) that declare them, checked; the command line lists, exports
and explains the jobs."""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import PROJECT_ROOT, run

import medfl
from medfl.__main__ import main
from medfl.common.job_version import MEDFL_VERSION_KEY
from medfl.common.settings import ConfigError
from medfl.recipes import JOBS, recipe_for
from medfl.site import MedflPolicyBuilder

JOBS_DIR = PROJECT_ROOT / "jobs"
REGENERATE = "python -m medfl export --all jobs"
TINY_UNET = {"name": "unet", "args": {"in_channels": 1, "out_channels": 1, "channels": [4, 8], "strides": [2],
                                      "num_res_units": 0}}


def files(folder: Path):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def read_export(tmp_path: Path, job: str, **kwargs) -> dict:
    """``{relative path: parsed JSON}`` of ``job``'s recipe exported with ``kwargs``."""
    recipe_for(job, **kwargs).export(str(tmp_path))
    return {name: json.loads((tmp_path / job / name).read_text()) for name in files(tmp_path / job)}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("exported")
    assert main(["export", "--all", str(folder)]) == 0
    return folder


def test_every_committed_job_has_a_recipe():
    committed = {p.name for p in JOBS_DIR.iterdir() if (p / "meta.json").is_file()}
    assert committed == set(JOBS), f"jobs without a recipe: {sorted(committed - set(JOBS))}; " \
                                   f"recipes without a job folder: {sorted(set(JOBS) - committed)}"


@pytest.mark.parametrize("job", sorted(JOBS))
def test_the_committed_job_is_its_recipe_exported(job, exported):
    ours, committed = exported / job, JOBS_DIR / job
    assert files(ours) == files(committed), f"{job}: files differ; regenerate with `{REGENERATE}`"
    differences = []
    for name in files(ours):
        new, old = (ours / name).read_text(), (committed / name).read_text()
        if new != old:
            differences += difflib.unified_diff(old.splitlines(), new.splitlines(), f"jobs/{job}/{name} (committed)",
                                                f"{job}/{name} (recipe)", lineterm="")
    assert not differences, (f"jobs/{job} is not what its recipe exports. If the committed JSON is right, copy its "
                             f"values into the job's JobSpec in medfl/recipes/; then run `{REGENERATE}`.\n"
                             + "\n".join(differences))


def test_jobs_carry_configuration_only(exported):
    assert not list(exported.rglob("custom")) and not list(exported.rglob("*.py"))
    meta = json.loads((exported / "fedsm_prostate" / "meta.json").read_text())
    assert meta == {"name": "fedsm_prostate", "resource_spec": {}, "min_clients": 3, "deploy_map": {"app": ["@ALL"]},
                    MEDFL_VERSION_KEY: medfl.__version__}


def test_a_setting_lands_on_every_side_that_declares_it(tmp_path):
    job = read_export(tmp_path, "fedavg_prostate", network=TINY_UNET, seed=3, num_rounds=2, num_threads=1)
    args = job["app/config/config_fed_server.json"]["workflows"][0]["args"]
    train = job["app/config/config_train.json"]
    assert args["network"] == train["network"] == TINY_UNET and args["seed"] == train["seed"] == 3
    assert args["num_rounds"] == 2 and "num_rounds" not in train
    assert train["num_threads"] == 1 and "num_threads" not in args


def test_fedsm_site_labels_and_selector_classes_follow_the_sites(tmp_path):
    sites = ["a", "b"]
    job = read_export(tmp_path, "fedsm_prostate", sites=sites, sync_selector_moments=False, array_piece_bytes=0)
    args = job["app/config/config_fed_server.json"]["workflows"][0]["args"]
    assert args["site_labels"] == {"a": 0, "b": 1} and args["selector_network"]["args"]["num_classes"] == 2
    assert job["app/config/config_train.json"]["selector_network"]["args"]["num_classes"] == 2
    client = job["app/config/config_fed_client.json"]
    assert client["task_data_filters"] == client["task_result_filters"] == []
    assert job["app/config/config_fed_server.json"]["task_data_filters"] == []
    assert job["meta.json"]["min_clients"] == 2


def filter_chains(config: dict, kind: str):
    return [(entry["tasks"], [(f["path"].rsplit(".", 1)[1], f["args"]) for f in entry["filters"]])
            for entry in config[kind]]


def test_fedsm_sends_large_arrays_in_pieces_around_the_moment_filters(tmp_path):
    """The server cuts its task data, each client joins it before its moment filter sees it and cuts its train
    result after the moments are attached; a piece size of 0 removes the four filters."""
    job = read_export(tmp_path, "fedsm_prostate", array_piece_bytes=2 ** 20)
    client, server = job["app/config/config_fed_client.json"], job["app/config/config_fed_server.json"]
    assert filter_chains(client, "task_data_filters") == [
        (["train", "validate"], [("JoinLargeArrays", {}), ("AdamMomentsReceiver", {})]),
        (["cross_evaluate"], [("JoinLargeArrays", {})])]
    assert filter_chains(client, "task_result_filters") == [
        (["train"], [("AdamMomentsSender", {}), ("SplitLargeArrays", {"piece_bytes": 2 ** 20})])]
    assert filter_chains(server, "task_data_filters") == [
        (["cross_evaluate", "train", "validate"], [("SplitLargeArrays", {"piece_bytes": 2 ** 20})])]
    off = read_export(tmp_path / "off", "fedsm_prostate", array_piece_bytes=0)
    assert [name for _, chain in filter_chains(off["app/config/config_fed_client.json"], "task_data_filters")
            for name, _ in chain] == ["AdamMomentsReceiver"]
    assert off["app/config/config_fed_server.json"]["task_data_filters"] == []
    with pytest.raises(ConfigError, match="array_piece_bytes must be a number of bytes >= 0"):
        recipe_for("fedsm_prostate", array_piece_bytes=-1)


def test_a_data_root_replaces_the_placeholder_and_per_site_roots_make_per_site_apps(tmp_path):
    one = read_export(tmp_path / "one", "fedavg_isic2019", dataset_root="/data")
    assert one["app/config/config_train.json"]["data_root"] == "/data/fed_isic2019"
    trunk = one["app/config/config_fed_server.json"]["workflows"][0]["args"]["trunk_checkpoint"]
    assert trunk == "/data/pretrained/resnet18-f37072fd.pth"
    roots = {"center_1": "/a", "center_2": "/b", "server": "/s"}
    each = read_export(tmp_path / "each", "fedavg_isic2019", sites=["center_1", "center_2"], dataset_root=roots)
    assert each["meta.json"]["deploy_map"] == {"app_server": ["server"], "app_center_1": ["center_1"],
                                               "app_center_2": ["center_2"]}
    assert each["app_center_2/config/config_train.json"]["data_root"] == "/b/fed_isic2019"
    args = each["app_server/config/config_fed_server.json"]["workflows"][0]["args"]
    assert args["trunk_checkpoint"].startswith("/s/")
    with pytest.raises(ConfigError, match=r"missing \['center_2'\]"):
        recipe_for("fedavg_isic2019", sites=["center_1", "center_2"], dataset_root={"center_1": "/a"})


def test_the_client_setting_data_root_is_not_the_recipes_dataset_root(tmp_path):
    """Several jobs have a client setting ``data_root``; a recipe takes it like any other setting, beside the
    ``dataset_root`` that replaces the placeholder."""
    job = read_export(tmp_path, "harmofl_camelyon17", dataset_root="/d", data_root="DATASET_ROOT/raw/demo_camelyon17")
    assert job["app/config/config_train.json"]["data_root"] == "/d/raw/demo_camelyon17"


@pytest.mark.parametrize("kwargs, message", [
    ({"num_round": 2}, r"unknown setting 'num_round' \(did you mean 'num_rounds'\?\) of job fedsm_prostate"),
    ({"num_rounds": 0}, r"\[server\] config_fed_server.json: 'num_rounds': Input should be greater than or equal to 1"),
    ({"batch_size": "eight"}, r"config_train.json: 'batch_size': Input should be a valid integer"),
    ({"tracking": "wandb"}, r"tracking must be one of \('tensorboard', 'mlflow'\)"),
    ({"sites": ["a", "a"]}, r"sites must be distinct client names"),
])
def test_a_wrong_setting_fails_before_anything_is_written(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        recipe_for("fedsm_prostate", **kwargs)


def test_mlflow_tracking_swaps_the_server_receiver_only(tmp_path):
    pytest.importorskip("mlflow", reason="mlflow is an optional extra: pip install 'medfl[tracking]'")
    job = read_export(tmp_path, "fedavg_prostate", tracking="mlflow")
    (receiver,) = job["app/config/config_fed_server.json"]["components"]
    assert receiver["path"] == "nvflare.app_opt.tracking.mlflow.mlflow_receiver.MLflowReceiver"
    assert receiver["args"]["kw_args"] == {"experiment_name": "fedavg_prostate"}
    committed = json.loads((JOBS_DIR / "fedavg_prostate" / "app" / "config" / "config_fed_client.json").read_text())
    assert job["app/config/config_fed_client.json"] == committed


def test_the_policy_builder_allows_medfl_in_every_kit(tmp_path):
    kits = {name: tmp_path / name / "local" for name in ("server1", "site-1")}
    for local in kits.values():
        local.mkdir(parents=True)
        (local / "resources.json.default").write_text(json.dumps({"format_version": 2, "servers": []}))
    project = SimpleNamespace(get_all_participants=lambda types: [SimpleNamespace(name=n) for n in kits])
    MedflPolicyBuilder().build(project, SimpleNamespace(get_local_dir=lambda p: kits[p.name]))
    for local in kits.values():
        resources = json.loads((local / "resources.json.default").read_text())
        assert resources["servers"] == [] and resources["class_allow_list"][-1] == "medfl."
        assert "nvflare.app_opt.tracking.tb.tb_writer.TBWriter" in resources["class_allow_list"]


def test_cli_lists_the_jobs_and_a_jobs_settings(capsys):
    assert main(["jobs"]) == 0
    listing = capsys.readouterr().out
    assert all(job in listing for job in JOBS) and "client_I2CVB, client_MSD, client_NCI_ISBI_3T" in listing
    assert main(["jobs", "fedsm_prostate"]) == 0
    settings = capsys.readouterr().out
    assert "  soft_pull_lambda [s] = 0.7\n      SoftPull's lambda: the weight a site keeps" in settings
    assert "  num_threads [c] = 0\n" in settings and "  seed [sc] = 0\n" in settings
    assert "  cross_site_evaluation [s] (default false)\n" in settings
    assert "  sync_selector_moments [recipe] = true\n" in settings


def test_cli_export_of_one_job_and_a_clear_error(tmp_path, capsys):
    assert main(["export", "harmofl_nuclei", str(tmp_path)]) == 0
    assert files(tmp_path / "harmofl_nuclei") == files(JOBS_DIR / "harmofl_nuclei")
    assert main(["run", "fedsm_prostate", "--env", "sim", "--set", "num_round=2"]) == 2
    assert "error: unknown setting 'num_round' (did you mean 'num_rounds'?)" in capsys.readouterr().err


def test_cli_help_names_the_jobs():
    out = run(["python", "-m", "medfl", "run", "--help"]).stdout
    assert "--env {sim,poc,prod}" in out and "--data-root" in out and "fedsm_prostate" in out
    assert "nvflare simulator jobs/<job>" in run(["python", "-m", "medfl", "--help"]).stdout
