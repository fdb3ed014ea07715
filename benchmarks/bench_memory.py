"""Peak resident memory of each job's simulator run with 3 clients (server, clients and every child process).

    python benchmarks/bench_memory.py [--jobs fedavg_prostate fedsm_prostate ...] [--work /tmp/bench_memory]

Each job runs 2 rounds of 1 local epoch with one thread per client, its default network, on its demo federation
(made here from ``../shared/data`` or synthetic), three of its sites: prostate 64x64 slices (FedAvg, FedSM, HarmoFL
2D), the HarmoFL prostate preparation at ``--harmofl_size`` (the paper's 384 is too slow here), synthetic Camelyon17
96x96 patches and DSB2018 nuclei tiles (HarmoFL, the jobs' DenseNet121 and UNet), HAM10000-mini at the jobs' 128x128
(PRR-FL, FedMAS and FedAvg; FedMAS with a one-epoch demo prior) and as the Fed-ISIC2019 demo at 128x128 (FedMAS,
BSM-FL, FedAvg: ResNet18 trunk, batch 64; FedMAS's prior is pre-trained here for one epoch by ``pretrain_moco.py``,
the trunk weights are random, standing in for ImageNet's), BreastMNIST (MedMNIST FedAvg). The process tree is
sampled every 0.5 s; the sum of its processes' RSS counts shared pages (libraries) once per process, so it
overstates the memory the run needs.

FedSM runs its default job (the 129 M-parameter VGG-11 selector) at ``image_size`` 64, the demo slices' size (the
selector's memory is its parameters, not its 1-image activations). For it each site's peak is set against the bytes
that site must hold: the server its models, the selector's averaged Adam moments and every client's result (the
arrays of :mod:`offline`'s round at the job's sizes); a client its three models with their gradients and two Adam
moments each. Goal: every site's peak RSS (libraries included) <= 1.3x that, and the whole run within a 24 GB
machine. The last line is FedSM's.
"""

from __future__ import annotations

import argparse
import contextlib
import io
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch
from bench_fedsm_client_memory import TRAINED_COPIES
from compare_dermoscopy import demo_prior
from compare_prostate import CLIENTS as PROSTATE_CLIENTS
from compare_prostate import demo_prostate
from offline import offline_round, payload_bytes
from simrun import ROOT, run_job

from medfl.common.resnet import resnet_trunk
from medfl.federations.camelyon17.demo import make_demo_camelyon17
from medfl.federations.camelyon17.preparation import prepare as prepare_camelyon17
from medfl.federations.dermoscopy.preparation import prepare_federation
from medfl.federations.isic2019.preparation import main as prepare_isic2019
from medfl.federations.medmnist.splits import prepare_client_splits
from medfl.federations.nuclei.demo import make_demo_nuclei
from medfl.federations.nuclei.preparation import prepare as prepare_nuclei
from medfl.federations.prostate2d.demo import make_demo_federation
from medfl.federations.prostate_saml.preparation import client_name
from medfl.federations.prostate_saml.preparation import prepare as prepare_harmofl
from medfl.fedmas.pretrain import main as pretrain_moco
from medfl.fedsm.protocol import MOMENTS_NAME

SHARED_DATA = ROOT.parent / "shared" / "data"
HARMOFL_SITES = ("BIDMC", "HK", "I2CVB")
DERMOSCOPY_CLIENTS = ("clientA", "clientB", "clientC")
DERMOSCOPY_SIZE = 128  # the jobs' image size
DERMOSCOPY_PRIOR = "pretrained/moco_r18_prrfl_ham10000.pth.tar"  # fedmas_dermoscopy's prior_checkpoint
CAMELYON17_CLIENTS = ("hospital1", "hospital2", "hospital3")
NUCLEI_CLIENTS = ("brightfield_purple", "confocal_green", "dapi_blue")
ISIC_CLIENTS = ("center_1", "center_2", "center_3")  # FLamby centres of HAM10000's sources
ISIC_DEPTH = 18
ISIC_SIZE = 128  # the paper's 224 is too slow here
PRIOR, TRUNK = "pretrained/moco_r18.pth.tar", "pretrained/resnet18.pth"
MEDMNIST_CLIENTS = ("site-1", "site-2", "site-3")
FEDSM_GOAL_RATIO = 1.3  # peak RSS / bytes a site must hold
MACHINE_GB = 24  # the machine the job must fit on with 3 clients
FEDSM_TRAIN = {"image_size": 64}  # the demo slices' size
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


def dermoscopy_with_prior(work: Path, args) -> Tuple[Path, List[str]]:
    """The dermoscopy federation and, where ``fedmas_dermoscopy`` looks for it, a one-epoch demo MoCo prior."""
    root, clients = dermoscopy(work, args)
    job_prior = root / DERMOSCOPY_PRIOR
    if not job_prior.is_file():
        prior = demo_prior(root, root / "prrfl_ham10000", clients, image_size=DERMOSCOPY_SIZE, epochs=1)
        job_prior.parent.mkdir(parents=True, exist_ok=True)
        job_prior.symlink_to(prior)
    return root, clients


def camelyon17(work: Path, args) -> Tuple[Path, List[str]]:
    root = work / "camelyon17"
    if not (root / "datalist_camelyon17").is_dir():
        make_demo_camelyon17(root / "raw", slides_per_hospital=4, patches_per_slide=10)
        prepare_camelyon17(root / "raw", root)
    return root, list(CAMELYON17_CLIENTS)


def nuclei(work: Path, args) -> Tuple[Path, List[str]]:
    root = work / "nuclei"
    if not (root / "datalist_nuclei").is_dir():
        make_demo_nuclei(args.shared_data / "nuclei_dsb2018", root / "raw")
        prepare_nuclei(root / "raw", root)
    return root, list(NUCLEI_CLIENTS)


def isic2019(work: Path, args) -> Tuple[Path, List[str]]:
    root = work / "isic2019"
    if not (root / PRIOR).is_file():
        ham = args.shared_data / "ham10000_mini"
        prepare_isic2019(["demo", "--ham-dir", str(ham), "--out", str(root / "fed_isic2019"),
                          "--image-size", str(ISIC_SIZE)])
        (root / TRUNK).parent.mkdir(parents=True, exist_ok=True)
        torch.save(resnet_trunk(ISIC_DEPTH).state_dict(), root / TRUNK)
        pretrain_moco(["--images", str(ham / "images"), "--output", str(root / PRIOR), "--depth", str(ISIC_DEPTH),
                       "--image-size", str(ISIC_SIZE), "--epochs", "1", "--max-images", "128",
                       "--batch-size", "32", "--queue-size", "256"])
    return root, list(ISIC_CLIENTS)


def medmnist(work: Path, args) -> Tuple[Path, List[str]]:
    root = work / "medmnist"
    npz = root / "medmnist" / "breastmnist.npz"
    if not npz.exists():
        npz.parent.mkdir(parents=True)
        npz.symlink_to(args.shared_data / "medmnist" / "breastmnist.npz")
        prepare_client_splits(npz, root / "medmnist" / "splits_breastmnist", num_clients=len(MEDMNIST_CLIENTS),
                              alpha=1000.0, seed=0, dataset="breastmnist")
    return root, list(MEDMNIST_CLIENTS)


MEDMNIST_TRAIN = {"dataset": "breastmnist", "data_root": "DATASET_ROOT/medmnist",
                  "datalist": "DATASET_ROOT/medmnist/splits_breastmnist"}
ISIC_TRAIN = {"image_size": ISIC_SIZE}
ISIC_SERVER = {"trunk_checkpoint": f"DATASET_ROOT/{TRUNK}"}
FEDMAS_TRAIN = {**ISIC_TRAIN, "prior_checkpoint": f"DATASET_ROOT/{PRIOR}",
                "network": {"name": "free_head_resnet", "args": {"n_classes": 8, "prior_dim": 512, "depth": ISIC_DEPTH}}}
# job -> (data set-up, server overrides, config_train.json overrides)
JOBS: Dict[str, Tuple[Setup, Dict, Dict]] = {
    "fedavg_prostate": (prostate, {}, {}),
    "fedsm_prostate": (prostate, {}, FEDSM_TRAIN),
    "harmofl_prostate": (harmofl, {}, {}),
    "harmofl_prostate_2d": (prostate, {}, {}),
    "harmofl_camelyon17": (camelyon17, {}, {"data_root": "DATASET_ROOT/raw"}),
    "harmofl_nuclei": (nuclei, {}, {"data_root": "DATASET_ROOT/raw", "patch_size": 64}),
    "prrfl_dermoscopy": (dermoscopy, {}, {}),
    "fedavg_dermoscopy": (dermoscopy, {}, {}),
    "fedmas_dermoscopy": (dermoscopy_with_prior, {}, {}),
    "fedmas_isic2019": (isic2019, ISIC_SERVER, FEDMAS_TRAIN),
    "fedavg_bsm_isic2019": (isic2019, ISIC_SERVER, ISIC_TRAIN),
    "fedavg_isic2019": (isic2019, ISIC_SERVER, ISIC_TRAIN),
    "fedavg_medmnist": (medmnist, {}, MEDMNIST_TRAIN),
    "fedavg_medmnist_scaleout": (medmnist, {}, MEDMNIST_TRAIN),
}


def fedsm_required_bytes() -> Dict[str, int]:
    """Bytes FedSM's server and each client must hold at their peak, at the job's network sizes."""
    offline = offline_round("fedsm_prostate")
    controller = offline.controller
    models = sum(payload_bytes(params) for params in controller.models.values())
    server = models + payload_bytes(controller.selector_moments) + sum(
        payload_bytes(result.params) for result in offline.results.values())
    held = {k: v for k, v in controller.payload_for(offline.clients[0]).items() if not k.startswith(MOMENTS_NAME)}
    return {"server": server, "client": TRAINED_COPIES * payload_bytes(held)}


def report_fedsm(by_site: Dict[str, int], peak_times: Dict[str, float]) -> None:
    """Each FedSM site's peak against what it must hold (and when, to find in the site's log), and the largest
    ratio."""
    required = fedsm_required_bytes()
    ratios = {}
    for site, peak in sorted(by_site.items()):
        if site == "server" or site.startswith("client_"):
            need = required["server" if site == "server" else "client"]
            ratios[site] = peak / need
            when = datetime.fromtimestamp(peak_times[site], timezone.utc).strftime("%H:%M:%S")
            print(f"FedSM {site:20s} peak {peak / 2**30:5.2f} GiB, must hold {need / 2**30:5.2f} GiB: "
                  f"{ratios[site]:.2f}x (at {when} UTC)")
    worst = max(ratios, key=ratios.get)
    total = sum(by_site.get(site, 0) for site in ratios)
    print(f"FedSM peak RSS / bytes held, 3 clients: {ratios[worst]:.2f}x at most ({worst}; goal <= "
          f"{FEDSM_GOAL_RATIO}x); sum of the sites' peaks {total / 1e9:.1f} GB (goal <= {MACHINE_GB} GB)")


def main(argv=None) -> Dict[str, int]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", nargs="+", choices=sorted(JOBS), default=list(JOBS))
    parser.add_argument("--harmofl_size", type=int, default=96)
    parser.add_argument("--shared_data", type=Path, default=SHARED_DATA)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_memory"))
    args = parser.parse_args(argv)
    peaks, fedsm_run = {}, None
    print(f"{'job':24s} {'clients':>7s} {'wall s':>7s} {'peak RSS GiB':>13s}")
    for job in args.jobs:
        setup, server_overrides, overrides = JOBS[job]
        with contextlib.redirect_stdout(io.StringIO()):  # the preparation's progress would split the table
            data, clients = setup(args.work / "data", args)
        server = {"num_rounds": 2, **server_overrides,
                  **({"min_fit_clients": len(clients)} if job == "fedavg_medmnist_scaleout" else {})}
        run = run_job(job, args.work / job, clients, data, server, {"num_threads": 1, "local_epochs": 1, **overrides})
        peaks[job] = run.peak_rss_bytes
        if job == "fedsm_prostate":
            fedsm_run = run
        print(f"{job:24s} {len(clients):7d} {run.wall_s:7.0f} {run.peak_rss_bytes / 2**30:13.2f}", flush=True)
    if fedsm_run is not None:
        report_fedsm(fedsm_run.peak_rss_by_site, fedsm_run.peak_time_by_site)
    return peaks


if __name__ == "__main__":
    main()
