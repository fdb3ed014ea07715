"""Run an NVFlare simulator job and measure its wall time and peak resident memory (whole process tree)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import psutil

from medfl.site import allow_medfl
from medfl.variant import make_variant

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class SimulatorRun:
    workspace: Path
    wall_s: float
    peak_rss_bytes: int
    peak_rss_by_site: Dict[str, int] = field(default_factory=dict)  # "server" (the simulator) and each client
    peak_time_by_site: Dict[str, float] = field(default_factory=dict)  # when each site peaked (POSIX seconds)
    variant: Optional[Path] = None  # the job folder that ran (the variant of jobs/<job>)

    @property
    def app_server(self) -> Path:
        return self.workspace / "server" / "simulate_job" / "app_server"


SIMULATOR_WORKER = re.compile(r"simulator_worker .*-o (\S+)")  # a client process: its workspace folder


def site_of(process: psutil.Process) -> str:
    """``server`` for the simulator process (it runs the server), the client's name for a client worker, else the
    command's first words (helper processes)."""
    command = " ".join(process.cmdline())
    worker = SIMULATOR_WORKER.search(command)
    if worker:
        return Path(worker[1]).name
    return "server" if " simulator " in f" {command} " else command[:40]


def tree_rss(process: psutil.Process, by_site: Optional[Dict[str, int]] = None,
             peak_times: Optional[Dict[str, float]] = None) -> int:
    """Resident memory of a process and all its descendants, in bytes; ``by_site`` (if given) keeps each site's
    peak (:func:`site_of`), ``peak_times`` (if given) when it was sampled (to find it in the site's log)."""
    total = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            rss = p.memory_info().rss
            if by_site is not None:
                site = site_of(p)
                if rss > by_site.get(site, 0):
                    by_site[site] = rss
                    if peak_times is not None:
                        peak_times[site] = time.time()
        except psutil.NoSuchProcess:
            continue
        total += rss
    return total


def run_job(job: str, work: Path, clients: Sequence[str], dataset_root: Path, server: Dict, train: Dict,
            edit_client_config: Optional[Callable[[dict], None]] = None, poll_s: float = 0.5) -> SimulatorRun:
    """Make a variant of ``jobs/<job>`` under ``work`` (``edit_client_config`` may change its
    ``config_fed_client.json``), run it in the simulator, return its wall time and peak memory."""
    variant = make_variant(ROOT / "jobs" / job, work / "jobs" / job, server, train)
    if edit_client_config is not None:
        path = variant / "app" / "config" / "config_fed_client.json"
        config = json.loads(path.read_text())
        edit_client_config(config)
        path.write_text(json.dumps(config, indent=2))
    workspace = work / "ws" / job
    allow_medfl(workspace)
    log = work / f"{job}.log"
    env = {**os.environ, "DATASET_ROOT": str(dataset_root), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    start, peak, by_site, peak_times = time.perf_counter(), 0, {}, {}
    with open(log, "w") as out:
        proc = subprocess.Popen(["nvflare", "simulator", str(variant), "-w", str(workspace), "-c", ",".join(clients),
                                 "-t", str(len(clients))], stdout=out, stderr=subprocess.STDOUT, env=env)
        handle = psutil.Process(proc.pid)
        while proc.poll() is None:
            peak = max(peak, tree_rss(handle, by_site, peak_times))
            time.sleep(poll_s)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"simulator run of {job} failed ({proc.returncode}); see {log}")
    return SimulatorRun(workspace, wall, peak, by_site, peak_times, variant)


LOG_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
ROUND_STARTED = r"round \d+/\d+ started"


def log_times(log: Path, pattern: str) -> List[float]:
    """Times (POSIX seconds) of the lines of an NVFlare log (``<workspace>/<site>/log.txt``) matching ``pattern``."""
    times = []
    for line in log.read_text().splitlines():
        stamp = LOG_STAMP.match(line)
        if stamp and re.search(pattern, line):
            times.append(datetime.strptime(stamp[1], "%Y-%m-%d %H:%M:%S,%f").timestamp())
    return times


def round_start_times(workspace: Path) -> List[float]:
    """Seconds (since the first) at which the server started each round, from ``<workspace>/server/log.txt``."""
    stamps = log_times(workspace / "server" / "log.txt", ROUND_STARTED)
    if len(stamps) < 2:
        raise RuntimeError(f"{workspace}: fewer than two 'round k/N started' lines in the server log")
    return [s - stamps[0] for s in stamps]


def server_curve(workspace: Path, tag: str) -> Tuple[List[int], List[float]]:
    """``(rounds, values)`` of a scalar the server wrote (e.g. ``val_mean/global``, validation of what was sent)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(workspace / "server" / "simulate_job" / "tb_events" / "server"))
    events.Reload()
    if tag not in events.Tags()["scalars"]:
        raise RuntimeError(f"{workspace}: the server wrote no '{tag}' scalar")
    scalars = events.Scalars(tag)
    return [e.step for e in scalars], [e.value for e in scalars]
