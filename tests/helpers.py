"""Shared test utilities: run the project's scripts and the NVFlare simulator."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

import yaml

from medfl.recipes.envs import sim_env
from medfl.site import allow_medfl

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(args: Sequence[str], env: Optional[Dict[str, str]] = None, timeout: int = 600, check: bool = True,
        cwd: Path = PROJECT_ROOT):
    """Run a command (from the project root unless ``cwd``) with the test interpreter's ``bin`` first on PATH."""
    full_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **(env or {})}
    result = subprocess.run(list(map(str, args)), cwd=cwd, env=full_env, capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({result.returncode}):\n"
                             f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def run_simulator(job: Path, workspace: Path, clients: Sequence[str], dataset_root: Path, timeout: int = 600):
    """``nvflare simulator`` with ``-t`` equal to the number of clients, in a workspace whose site policy allows
    the installed medfl (as the README's set-up does); returns the completed process."""
    allow_medfl(workspace)
    return run([BIN / "nvflare", "simulator", job, "-w", workspace, "-c", ",".join(clients), "-t", len(clients)],
               env={"DATASET_ROOT": str(dataset_root)}, timeout=timeout)


def run_in_simenv(recipe, workspace_root: Path) -> Path:
    """Run a medfl recipe in NVFlare's SimEnv under ``workspace_root``; return the workspace of the run (laid out as
    ``nvflare simulator -w`` lays it out: ``server/simulate_job/app_server``, ``<site>/log.txt``)."""
    result = recipe.run(sim_env(recipe.sites, workspace_root)).get_result()
    assert Path(result) == workspace_root / recipe.name
    return Path(result)


def python_without_medfl(root: Path) -> Path:
    """A Python environment with every package of the test environment except medfl; returns its ``bin`` folder.

    A site of a BYOC job needs no medfl installed: its code comes with the job. On one machine every site shares
    this environment, so a BYOC test starts the sites from this one (first on their ``PATH``): a venv whose
    site-packages links every entry of ours but medfl's (its files, or its editable-install hook).
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", root], check=True)
    ours = Path(sysconfig.get_paths()["purelib"])
    theirs = Path(subprocess.run([root / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 capture_output=True, text=True, check=True).stdout.strip())
    for entry in ours.iterdir():
        if not entry.name.startswith("medfl") and not ("editable" in entry.name and "medfl" in entry.name):
            (theirs / entry.name).symlink_to(entry)
    probe = subprocess.run([root / "bin" / "python", "-c", "import medfl"], capture_output=True, cwd=root)
    assert probe.returncode != 0, "medfl must not be importable there"
    return root / "bin"


def as_longer_run(state_file: Path, num_rounds: int) -> None:
    """Turn a finished run's ``server_state.pt`` into the state a run of ``num_rounds`` rounds writes at the same
    round (a resume refuses a state of another ``num_rounds``). Only for methods whose rounds do not depend on
    ``num_rounds`` (FedAvg, HarmoFL): the rest of the state is then the same."""
    import torch

    state = torch.load(state_file, weights_only=True)
    state["num_rounds"] = num_rounds
    torch.save(state, state_file)


def make_job_variant(job: str, target: Path, server: Dict[str, object], train: Dict[str, object]) -> Path:
    from medfl.variant import make_variant

    return make_variant(PROJECT_ROOT / "jobs" / job, target, server, train)


class PocDeployment:
    """A POC deployment on loopback in a temporary HOME / workspace: prepare, start, submit, wait, download, stop.

    Every site allows the installed medfl's classes (deployment way (a)) unless ``allow_installed_medfl`` is off
    (way (b): jobs that carry their code).

    Use as a context manager; every process is stopped on exit, also when a test fails.
    """

    def __init__(self, root: Path, clients: Sequence[str], env: Optional[Dict[str, str]] = None,
                 heart_beat_timeout: Optional[int] = None, allow_installed_medfl: bool = True):
        self.root = root
        self.clients = list(clients)
        self.allow_installed_medfl = allow_installed_medfl
        self.heart_beat_timeout = heart_beat_timeout
        for sub in ("home", "tmp"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self.env = {"HOME": str(root / "home"), "TMPDIR": str(root / "tmp"),
                    "NVFLARE_POC_WORKSPACE": str(root / "poc"), **(env or {})}

    def nvflare(self, *args, timeout: int = 300, check: bool = True):
        # from the deployment's own folder: a participant started from the project root could import medfl from
        # there (python -m puts the working folder first on the import path), whatever the site installed
        return run([BIN / "nvflare", *args], env=self.env, timeout=timeout, check=check, cwd=self.root)

    @property
    def kits(self) -> Path:
        """The folder of the participants' startup kits (the server's is ``POC_SERVER``)."""
        return next((self.root / "poc").glob("*/prod_00"))

    def __enter__(self) -> "PocDeployment":
        # free ports (another deployment on this machine may hold NVFlare's defaults), so a project file
        project = poc_project(self.clients, self.root / "project.yml")
        try:
            self.nvflare("poc", "prepare", "-i", project, "--force")
            if self.allow_installed_medfl:  # each site allows the installed medfl's classes, as a hospital does
                for kit in [POC_SERVER, *self.clients]:
                    allow_medfl(self.kits / kit)
            if self.heart_beat_timeout:
                self.set_heart_beat_timeout(self.heart_beat_timeout)
            self.nvflare("poc", "start", "--timeout", "120")
        except BaseException:
            self.__exit__()
            raise
        return self

    def set_heart_beat_timeout(self, seconds: int) -> None:
        """Seconds without a heartbeat after which the server drops a site (the server's local resources.json;
        NVFlare's default 600)."""
        resources = self.kits / POC_SERVER / "local" / "resources.json"
        config = json.loads(resources.read_text())
        config["servers"][0]["heart_beat_timeout"] = seconds
        resources.write_text(json.dumps(config, indent=2))

    def __exit__(self, *exc) -> None:
        self.nvflare("poc", "stop", timeout=120, check=False)
        subprocess.run(["pkill", "-f", str(self.root / "poc")], check=False)

    def submit_and_wait(self, job: Path, timeout: int = 600) -> Path:
        """Submit ``job``, wait for it, download the result; return the downloaded server workspace."""
        out = self.nvflare("job", "submit", "-j", job).stdout
        job_id = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("job_id:"))
        status = self.nvflare("job", "wait", job_id, "--timeout", str(timeout), timeout=timeout + 60)
        text = status.stdout + status.stderr
        if "FINISHED:COMPLETED" not in text:
            logs = self.nvflare("job", "logs", job_id, check=False)
            raise AssertionError(f"job {job_id} did not complete:\n{text}\n{logs.stdout[-4000:]}")
        self.nvflare("job", "download", job_id, "-o", self.root / "download" / job_id)
        return self.root / "download" / job_id / job_id / "workspace"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def with_free_ports(project_file: Path, target: Path) -> Path:
    """A copy of a project.yml whose server ports are free now (a port of an earlier run may still be in
    TIME_WAIT, which fails NVFlare's preflight check)."""
    project = yaml.safe_load(project_file.read_text())
    for participant in project["participants"]:
        if participant["type"] == "server":
            participant["fed_learn_port"], participant["admin_port"] = free_port(), free_port()
    target.write_text(yaml.safe_dump(project))
    return target


POC_SERVER = "localhost"


def poc_project(clients: Sequence[str], target: Path) -> Path:
    """A POC project file: ``deploy/project.yml``'s server (on free ports), admin and builders, with ``clients``."""
    project = yaml.safe_load((PROJECT_ROOT / "deploy" / "project.yml").read_text())
    others = [p for p in project["participants"] if p["type"] != "client"]
    project["name"] = "medfl_poc"
    project["participants"] = others + [{"name": c, "type": "client", "org": "demo"} for c in clients]
    target.write_text(yaml.safe_dump(project))
    return with_free_ports(target, target)


class ProvisionedDeployment:
    """``nvflare provision`` of ``deploy/project.yml``, then the server and every site started from their startup
    kits on loopback (each site with its own environment, e.g. ``DATASET_ROOT``), as the README walks through.
    Everything is shut down on exit."""

    def __init__(self, root: Path, project_file: Path, site_env: Dict[str, Dict[str, str]]):
        self.root = root
        self.site_env = site_env
        for sub in ("home", "tmp"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self.env = {"HOME": str(root / "home"), "TMPDIR": str(root / "tmp")}
        run([BIN / "nvflare", "provision", "-p", with_free_ports(project_file, root / "project.yml"), "-w", root / "ws",
             "--force"], env=self.env)
        self.kits = next((root / "ws").glob("*/prod_00"))
        self.admin = next(p for p in self.kits.iterdir() if "@" in p.name)

    def nvflare(self, *args, timeout: int = 300, check: bool = True):
        return run([BIN / "nvflare", *args, "--startup-kit", self.admin], env=self.env, timeout=timeout, check=check)

    def _start(self, participant: str, env: Dict[str, str]) -> None:
        # the kit's script leaves the participant running in the background: give it a log file, not a pipe
        with open(self.root / f"{participant}.out", "w") as log:
            subprocess.run(["./startup/start.sh"], cwd=self.kits / participant, check=True, stdout=log,
                           stderr=subprocess.STDOUT, env={**os.environ, **self.env, **env,
                                                          "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"})

    def _preflight(self, participant: str) -> None:
        check = run([BIN / "nvflare", "preflight-check", "-p", self.kits / participant], env=self.env)
        assert "overall: pass" in check.stdout, check.stdout[-2000:]

    def _wait_for(self, names: Sequence[str], attempts: int = 60) -> None:
        """Until the server answers (with no client yet it answers SYSTEM_NOT_READY) and ``names`` are registered."""
        status = ""
        for _ in range(attempts):
            result = self.nvflare("system", "status", check=False)
            status = result.stdout + result.stderr
            answered = "Engine status" in status or "SYSTEM_NOT_READY" in status
            if answered and all(name in status for name in names):
                return
            time.sleep(2)
        raise AssertionError(f"{names} not up:\n{status}")

    def __enter__(self) -> "ProvisionedDeployment":
        server = next(p.name for p in self.kits.iterdir() if (p / "startup" / "fed_server.json").is_file())
        self._preflight(server)
        self._start(server, {})
        self._wait_for([])
        allow_medfl(self.kits / server)
        for site, env in self.site_env.items():
            allow_medfl(self.kits / site)  # `python -m medfl site-policy <kit>`, as each hospital does (README)
            self._preflight(site)
            self._start(site, env)
        self._wait_for(list(self.site_env))
        return self

    def __exit__(self, *exc) -> None:
        self.nvflare("system", "shutdown", "all", "--force", timeout=120, check=False)
        subprocess.run(["pkill", "-f", str(self.root / "ws")], check=False)

    def submit_and_wait(self, job: Path, timeout: int = 600) -> str:
        out = self.nvflare("job", "submit", "-j", job).stdout
        job_id = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("job_id:"))
        status = self.nvflare("job", "wait", job_id, "--timeout", str(timeout), timeout=timeout + 60)
        assert "FINISHED:COMPLETED" in status.stdout + status.stderr, status.stdout + status.stderr
        return job_id


def configure(executor, config: Dict[str, object], site: Optional[str] = None):
    """Give a client built outside NVFlare its settings, as its start of run would from ``config_train.json``."""
    if site is not None:
        executor.site = site
    executor.settings = type(executor).Settings.load(config, "config_train.json", executor.site or None)
    return executor
