"""Typed settings: every job's configs load through the classes that run them, and a typo is an error that names the
file, the key and the closest known key, for the clients (config_train.json) and the servers (workflow args)."""

import json
from pathlib import Path

import pytest

from medfl.common.settings import ConfigError, OptimizerSpec, closest_key
from medfl.job_config import check_job
from medfl.variant import VariantError, make_variant

ROOT = Path(__file__).resolve().parents[1]
JOBS = sorted(p.name for p in (ROOT / "jobs").iterdir() if (p / "meta.json").is_file())


@pytest.mark.parametrize("job", JOBS)
def test_every_committed_job_validates(job):
    check_job(ROOT / "jobs" / job)


@pytest.mark.parametrize("job", JOBS)
def test_a_client_typo_names_the_file_the_key_and_the_closest_key(job, tmp_path):
    variant = make_variant(ROOT / "jobs" / job, tmp_path / job, {}, {})
    train = variant / "app" / "config" / "config_train.json"
    config = json.loads(train.read_text())
    config["local_epoch"] = config.pop("local_epochs")
    train.write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"config_train.json: unknown key 'local_epoch' \(did you mean "
                                          r"'local_epochs'\?\)"):
        check_job(variant)


@pytest.mark.parametrize("job", JOBS)
def test_a_server_typo_names_the_file_the_key_and_the_closest_key(job, tmp_path):
    variant = make_variant(ROOT / "jobs" / job, tmp_path / job, {}, {})
    server = variant / "app" / "config" / "config_fed_server.json"
    config = json.loads(server.read_text())
    args = config["workflows"][0]["args"]
    args["num_round"] = args.pop("num_rounds")
    server.write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"\[server\] .*config_fed_server.json: unknown key 'num_round' \(did you "
                                          r"mean 'num_rounds'\?\)"):
        check_job(variant)


def test_wrong_types_and_ranges_are_errors_too(tmp_path):
    source = ROOT / "jobs" / "fedavg_prostate"
    with pytest.raises(ConfigError, match=r"'optimizer.lr': Input should be less than or equal to 1 \(got 1000000.0\)"):
        make_variant(source, tmp_path / "a", {}, {"optimizer": {"name": "adam", "lr": 1e6}})
    with pytest.raises(ConfigError, match=r"'batch_size': Input should be greater than or equal to 1"):
        make_variant(source, tmp_path / "b", {}, {"batch_size": 0})
    with pytest.raises(ConfigError, match=r"'num_rounds': Input should be a valid integer"):
        make_variant(source, tmp_path / "c", {"num_rounds": "many"}, {})
    with pytest.raises(ConfigError, match="'momentum' applies to SGD only"):
        OptimizerSpec.load({"name": "adam", "lr": 1e-3, "momentum": 0.9}, "config_train.json")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_shared_settings_stay_equal_on_both_sides(tmp_path):
    """A variant's network reaches the server's initial model and the clients alike."""
    network = {"name": "unet", "args": {"channels": [4, 8], "strides": [2]}}
    variant = make_variant(ROOT / "jobs" / "fedavg_prostate", tmp_path / "v", {}, {"network": network})
    config_dir = variant / "app" / "config"
    assert json.loads((config_dir / "config_train.json").read_text())["network"] == network
    assert json.loads((config_dir / "config_fed_server.json").read_text())["workflows"][0]["args"]["network"] == network


def test_variant_refuses_targets_it_must_not_touch(tmp_path):
    source = ROOT / "jobs" / "fedavg_prostate"
    for target in (source, source / "inner", ROOT / "jobs", ROOT / "jobs" / "new_job"):
        with pytest.raises(VariantError, match="is, contains or lies inside"):
            make_variant(source, target, {}, {})
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("data")
    with pytest.raises(VariantError, match="not a job variant made by this tool"):
        make_variant(source, tmp_path / "mine", {}, {})
    assert (tmp_path / "mine" / "keep.txt").read_text() == "data"
    make_variant(source, tmp_path / "made", {}, {})
    make_variant(source, tmp_path / "made", {"num_rounds": 3}, {})  # an earlier variant is replaced
    make_variant(source, tmp_path / "mine", {}, {}, force=True)
    assert not (tmp_path / "mine" / "keep.txt").exists()


def test_closest_key():
    assert closest_key("learning_rte", ["learning_rate", "local_epochs"]) == "learning_rate"
    assert closest_key("zzz", ["learning_rate"]) is None
