"""Shared test utilities: run the project's scripts and the NVFlare simulator."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(args: Sequence[str], env: Optional[Dict[str, str]] = None, timeout: int = 600, check: bool = True):
    """Run a command from the project root with the test interpreter's ``bin`` first on PATH."""
    full_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **(env or {})}
    result = subprocess.run(list(map(str, args)), cwd=PROJECT_ROOT, env=full_env, capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({result.returncode}):\n"
                             f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def run_simulator(job: Path, workspace: Path, clients: Sequence[str], dataset_root: Path, timeout: int = 600):
    """``nvflare simulator`` with ``-t`` equal to the number of clients; returns the completed process."""
    return run([BIN / "nvflare", "simulator", job, "-w", workspace, "-c", ",".join(clients), "-t", len(clients)],
               env={"DATASET_ROOT": str(dataset_root)}, timeout=timeout)


def make_job_variant(job: str, target: Path, server: Dict[str, object], train: Dict[str, object],
                     keep_links: bool = False) -> Path:
    sys.path.insert(0, str(PROJECT_ROOT / "tools"))
    from job_variant import make_variant

    return make_variant(PROJECT_ROOT / "jobs" / job, target, server, train, keep_links)


class PocDeployment:
    """A POC deployment on loopback in a temporary HOME / workspace: prepare, start, submit, wait, download, stop.

    Use as a context manager; every process is stopped on exit, also when a test fails.
    """

    def __init__(self, root: Path, clients: Sequence[str], env: Optional[Dict[str, str]] = None):
        self.root = root
        self.clients = list(clients)
        for sub in ("home", "tmp"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self.env = {"HOME": str(root / "home"), "TMPDIR": str(root / "tmp"),
                    "NVFLARE_POC_WORKSPACE": str(root / "poc"), **(env or {})}

    def nvflare(self, *args, timeout: int = 300, check: bool = True):
        return run([BIN / "nvflare", *args], env=self.env, timeout=timeout, check=check)

    def __enter__(self) -> "PocDeployment":
        self.nvflare("poc", "prepare", "-c", *self.clients, "--force")
        self.nvflare("poc", "start", "--timeout", "120")
        return self

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
