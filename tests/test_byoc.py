"""``python -m medfl export-byoc``: a job that carries exactly the medfl files it needs, and nothing else."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from helpers import BIN, PROJECT_ROOT, python_without_medfl, run

import medfl
from medfl.byoc import app_files, export_byoc, import_closure, module_file, module_imports
from medfl.common.errors import DataError
from medfl.common.job_version import MEDFL_VERSION_KEY

JOBS = sorted(p for p in (PROJECT_ROOT / "jobs").iterdir() if (p / "meta.json").is_file())
METHODS = ("fedavg", "fedsm", "harmofl", "prrfl", "fedmas")
NOT_FOR_JOBS = ("__main__.py", "byoc.py", "job_config.py", "site.py", "variant.py")

# Run in a Python without the installed medfl: for each exported job, load the package from its app/custom, import
# every class and network module its configuration names and check every network name resolves; report the files
# of every medfl module loaded.
LOAD_EXPORTS = r"""
import importlib, importlib.machinery, importlib.util, json, sys
from pathlib import Path

report = {}
for export in sys.argv[1:]:
    custom = Path(export, "app", "custom")
    for name in [m for m in sys.modules if m == "medfl" or m.startswith("medfl.")]:
        del sys.modules[name]
    spec = importlib.machinery.PathFinder.find_spec("medfl", [str(custom)])
    package = importlib.util.module_from_spec(spec)
    sys.modules["medfl"] = package
    spec.loader.exec_module(package)
    names, networks = [], []
    def walk(value, key=""):
        if isinstance(value, dict):
            if isinstance(value.get("path"), str) and value["path"].startswith("medfl."):
                names.append(value["path"])
            if key == "network" and isinstance(value.get("name"), str):
                networks.append(value["name"])
            for k, v in value.items():
                walk(v, k)
        elif isinstance(value, list):
            for v in value:
                walk(v, key)
    for config in sorted(Path(export, "app", "config").glob("*.json")):
        walk(json.loads(config.read_text()))
    for path in names:
        module, _, attr = path.rpartition(".")
        getattr(importlib.import_module(module), attr)
    for network in networks:
        module, _, attr = network.rpartition(":")
        if module:
            importlib.import_module(module)
        assert attr in importlib.import_module("medfl.common.networks").NETWORKS, network
    report[export] = sorted(m.__file__ for n, m in sys.modules.items()
                            if (n == "medfl" or n.startswith("medfl.")) and getattr(m, "__file__", None))
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("byoc")
    return {job.name: export_byoc(job, root / job.name) for job in JOBS}


def custom_files(export: Path) -> set:
    custom = export / "app" / "custom"
    return {str(p.relative_to(custom)) for p in custom.rglob("*") if p.is_file()}


def test_the_export_holds_the_configuration_unchanged_and_the_version_of_its_code(exports):
    export = exports["fedavg_prostate"]
    job = PROJECT_ROOT / "jobs" / "fedavg_prostate"
    for config in (job / "app" / "config").iterdir():
        assert (export / "app" / "config" / config.name).read_bytes() == config.read_bytes(), config.name
    meta = json.loads((export / "meta.json").read_text())
    assert meta == {**json.loads((job / "meta.json").read_text()), MEDFL_VERSION_KEY: medfl.__version__}
    assert sorted(p.name for p in export.iterdir()) == ["app", "meta.json"]
    for relative in custom_files(export):
        assert (export / "app" / "custom" / relative).read_bytes() == (PROJECT_ROOT / relative).read_bytes()


@pytest.mark.parametrize("job", [j.name for j in JOBS])
def test_each_job_carries_its_method_and_no_other_and_no_tool(job, exports):
    files = custom_files(exports[job])
    assert "medfl/__init__.py" in files and "medfl/common/controller.py" in files
    assert all(name.endswith(".py") for name in files), files
    method = job.split("_")[0]
    carried = {name.split("/")[1] for name in files if name.split("/")[1] in METHODS}
    assert carried <= {method, "fedavg"} and method in carried, carried
    assert not {f"medfl/{name}" for name in NOT_FOR_JOBS} & files


def test_the_closure_follows_relative_imports_and_packages():
    closure = import_closure({"medfl.fedavg.controller"})
    assert {"medfl", "medfl.fedavg", "medfl.fedavg.controller", "medfl.common", "medfl.common.controller",
            "medfl.common.liveness", "medfl.common.job_version"} <= closure
    assert "medfl.common.controller" in module_imports("medfl.fedavg.controller") or any(
        m.startswith("medfl.common") for m in module_imports("medfl.fedavg.controller"))
    assert not any(m.startswith(("medfl.fedsm", "medfl.federations")) for m in closure)


def test_a_network_named_by_module_is_carried(exports):
    """FedAvg on dermoscopy names its network ``medfl.federations.dermoscopy.networks:vgg16_slim``: no import
    statement of the FedAvg controller reaches that module, the configuration does."""
    config = (PROJECT_ROOT / "jobs" / "fedavg_dermoscopy" / "app" / "config")
    assert "medfl.federations.dermoscopy.networks:vgg16_slim" in (config / "config_train.json").read_text()
    assert "medfl/federations/dermoscopy/networks.py" in custom_files(exports["fedavg_dermoscopy"])


def test_every_exported_job_loads_from_its_own_copy_in_a_python_without_medfl(exports, tmp_path):
    """Sufficient and nothing more: in a Python where medfl is not installed, each job's classes and networks load
    from its custom/ alone, and the files they load are exactly the files the export carries."""
    python = python_without_medfl(tmp_path / "venv") / "python"
    result = subprocess.run([python, "-c", LOAD_EXPORTS, *map(str, exports.values())], capture_output=True,
                            text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    for job, export in exports.items():
        custom = export / "app" / "custom"
        files = {str(Path(f).relative_to(custom)) for f in loaded[str(export)]}
        assert files == custom_files(export), (job, sorted(files ^ custom_files(export)))


def test_refusals_change_nothing(tmp_path, exports):
    job = PROJECT_ROOT / "jobs" / "fedavg_prostate"
    with pytest.raises(DataError, match="the target exists"):
        export_byoc(job, exports["fedsm_prostate"])
    with pytest.raises(DataError, match="already carries code"):
        export_byoc(exports["fedavg_prostate"], tmp_path / "again")
    with pytest.raises(DataError, match="no meta.json"):
        export_byoc(tmp_path, tmp_path / "out")
    assert not (tmp_path / "again").exists() and not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp.")], "no staging folder is left behind"


def test_a_configuration_naming_no_medfl_module_is_refused(tmp_path):
    config = tmp_path / "app" / "config"
    config.mkdir(parents=True)
    (config / "config_train.json").write_text(json.dumps({"network": {"name": "medfl.nowhere:net"}}))
    with pytest.raises(DataError, match="'medfl.nowhere:net' names no module of the medfl package"):
        app_files(config)


def test_the_command_line(tmp_path):
    out = run([BIN / "python", "-m", "medfl", "export-byoc", "jobs/fedavg_prostate", tmp_path / "job"]).stdout
    assert f"BYOC job written to {tmp_path / 'job'} (medfl {medfl.__version__}" in out
    assert module_file("medfl.byoc") is not None
    failed = run([BIN / "python", "-m", "medfl", "export-byoc", "jobs/fedavg_prostate", tmp_path / "job"],
                 check=False)
    assert failed.returncode == 2 and "the target exists" in failed.stderr
