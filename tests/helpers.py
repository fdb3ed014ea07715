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


def make_job_variant(job: str, target: Path, server: Dict[str, object], train: Dict[str, object]) -> Path:
    sys.path.insert(0, str(PROJECT_ROOT / "tools"))
    from job_variant import make_variant

    return make_variant(PROJECT_ROOT / "jobs" / job, target, server, train)
