"""Peak resident memory of each job's simulator run with 3 clients (server, clients and every child process).

    python benchmarks/bench_memory.py [--jobs fedavg_prostate fedsm_prostate ...] [--work /tmp/bench_memory]

Each job runs 2 rounds of 1 local epoch with one thread per client, its default network, on its demo
federation (made here from ``../shared/data`` or synthetic): prostate 64x64 slices (FedAvg, FedSM), the
HarmoFL prostate preparation at ``--harmofl_size`` (the paper's 384 is too slow here), HAM10000-mini at the
jobs' 128x128 (PRR-FL and its FedAvg), BreastMNIST (MedMNIST FedAvg). FedMAS is not run: its clients need a
MoCo prior checkpoint (see docs/fedmas.md). The process tree is sampled every 0.5 s; the sum of its
processes' RSS counts shared pages (libraries) once per process, so it overstates the memory the run needs.
Goal: FedSM <= 3 GB. The last line is FedSM's peak.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Dict, List, Tuple

from simrun import ROOT, run_job
from compare_prostate import CLIENTS as PROSTATE_CLIENTS, demo_prostate

sys.path.insert(0, str(ROOT / "data_preparation"))
from make_demo_prostate import make_demo_federation  # noqa: E402
from prepare_harmofl_prostate import client_name, prepare as prepare_harmofl  # noqa: E402
from prepare_ham10000_prrfl import prepare_federation  # noqa: E402
from medfl.fedavg_medmnist.splits import prepare_client_splits  # noqa: E402

SHARED_DATA = ROOT.parent / "shared" / "data"
HARMOFL_SITES = ("BIDMC", "HK", "I2CVB")
DERMOSCOPY_CLIENTS = ("clientA", "clientB", "clientC")
MEDMNIST_CLIENTS = ("site-1", "site-2", "site-3")
FEDSM_GOAL_GB = 3.0
# job -> (data maker(work, args) -> (DATASET_ROOT, clients), config_train overrides)
Setup = Callable[[Path, argparse.Namespace], Tuple[Path, List[str]]]


def prostate(work: Path, args) -> Tuple[Path, List[str]]:
    return demo_prostate(work / "prostate"), list(PROSTATE_CLIENTS)


def harmofl(work: Path, args) -> Tuple[Path, List[str]]:
    root = work / "harmofl_prostate"
    if not (root / "datalist_harmofl_prostate").is_dir():
        make_demo_federation(root / "raw", cases_per_site=6, sites=HARMOFL_SITES)
        prepare_harmofl(root / "raw", root, sites=HARMOFL_SITES, size=args.harmofl_size)
    return root, [client_name(site) for site in HARMOFL_SITES]


def dermoscopy(work: Path, args) -> Tuple[Path, List[str]]:
    root = work / "dermoscopy"
    if not (root / "prrfl_ham10000").is_dir():
        prepare_federation(args.shared_data / "ham10000_mini", root / "prrfl_ham10000", log=lambda message: None)
    return root, list(DERMOSCOPY_CLIENTS)


def medmnist(work: Path, args) -> Tuple[Path, List[str]]:
    root = work / "medmnist"
    npz = root / "medmnist" / "breastmnist.npz"
    if not npz.exists():
        npz.parent.mkdir(parents=True)
        npz.symlink_to(args.shared_data / "medmnist" / "breastmnist.npz")
        prepare_client_splits(npz, root / "medmnist" / "splits_breastmnist", num_clients=len(MEDMNIST_CLIENTS),
                              alpha=1000.0, seed=0, dataset="breastmnist")
    return root, list(MEDMNIST_CLIENTS)


MEDMNIST_TRAIN = {"dataset": "breastmnist", "npz_path": "DATASET_ROOT/medmnist/breastmnist.npz",
                  "split_dir": "DATASET_ROOT/medmnist/splits_breastmnist"}
JOBS: Dict[str, Tuple[Setup, Dict]] = {
    "fedavg_prostate": (prostate, {}),
    "fedsm_prostate": (prostate, {}),
    "harmofl_prostate": (harmofl, {}),
    "prrfl_dermoscopy": (dermoscopy, {}),
    "fedavg_dermoscopy": (dermoscopy, {}),
    "fedavg_medmnist": (medmnist, MEDMNIST_TRAIN),
}


def main(argv=None) -> Dict[str, int]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", nargs="+", choices=sorted(JOBS), default=list(JOBS))
    parser.add_argument("--harmofl_size", type=int, default=96)
    parser.add_argument("--shared_data", type=Path, default=SHARED_DATA)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_memory"))
    args = parser.parse_args(argv)
    peaks = {}
    print(f"{'job':20s} {'clients':>7s} {'wall s':>7s} {'peak RSS GiB':>13s}")
    for job in args.jobs:
        setup, overrides = JOBS[job]
        data, clients = setup(args.work / "data", args)
        server = {"num_rounds": 2, **({"min_fit_clients": len(clients)} if job == "fedavg_medmnist" else {})}
        run = run_job(job, args.work / job, clients, data, server, {"num_threads": 1, "local_epochs": 1, **overrides})
        peaks[job] = run.peak_rss_bytes
        print(f"{job:20s} {len(clients):7d} {run.wall_s:7.0f} {run.peak_rss_bytes / 2**30:13.2f}", flush=True)
    if "fedsm_prostate" in peaks:
        peak = peaks["fedsm_prostate"]
        print(f"FedSM simulator peak RSS with 3 clients: {peak / 1e9:.2f} GB ({peak / 2**30:.2f} GiB; "
              f"goal <= {FEDSM_GOAL_GB:.0f} GB)")
    return peaks


if __name__ == "__main__":
    main()
