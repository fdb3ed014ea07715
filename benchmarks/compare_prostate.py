"""Prostate federation: FedSM, HarmoFL and FedAvg (NVFlare simulator) against local-only and centralised training,
with the same UNet, seed and budget; writes a test-Dice table (markdown + CSV) and the validation curves (PNG).

    python benchmarks/compare_prostate.py [--rounds 20] [--seeds 0 1 2] [--work /tmp/compare_prostate] \
        [--data <prepared root holding dataset_2D/ and datalist_2D/>]

Without ``--data`` the synthetic demo federation is made and prepared at ``--size`` (see
``data_preparation/make_demo_prostate.py``). The budget is ``--rounds`` rounds of the jobs' ``local_epochs``;
the baselines train ``rounds * local_epochs`` epochs with the jobs' network, Adam learning rate, batch size and
augmentation (``--train`` overrides any ``config_train.json`` key for every method alike, e.g. a smaller UNet;
``--job-train JOB JSON`` one job's only, e.g. FedSM's ``selector_network``).
Every method's model is selected on validation Dice; the table reports foreground Dice on each site's testing
split (FedSM: the super model, threshold 0.9, and its global model). HarmoFL runs as ``jobs/harmofl_prostate_2d``:
FedAvg's client with HarmoFL's amplitude exchange, amplitude normalisation and weight-perturbed Adam, and
HarmoFL's equal client weights and truncation of every client's training set to the smallest one; its global
model is tested with the amplitude reference the server saved (``result_stat/harmofl_test_only.py``).
The two last lines printed are HarmoFL's mean test Dice minus FedAvg's, then the figure to track: FedSM's mean
test Dice minus FedAvg's (each where ``--jobs`` ran both: e.g. ``--jobs fedavg_prostate harmofl_prostate_2d`` leaves
out FedSM, whose VGG-11 selector makes it the longest run; ``bench_fedsm_prostate.py`` runs it with FedAvg).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple
from unittest import mock

import torch
from baselines import Recipe, SiteData, run_baselines
from monai.losses import DiceLoss
from results_table import report
from simrun import ROOT, run_job, server_curve

from medfl.common.config import PLACEHOLDER
from medfl.common.data import SegmentationSliceDataset, datalist_path, load_segmentation_pairs, read_datalist
from medfl.common.networks import build_network
from medfl.common.settings import OptimizerSpec
from medfl.common.train import build_optimizer, evaluate_dice
from medfl.federations.prostate2d.client import TRAIN_AUGMENTATION
from medfl.federations.prostate2d.demo import make_demo_federation
from medfl.federations.prostate2d.preparation import prepare
from medfl.fedsm import testing as prostate_2d_test_only
from medfl.harmofl import testing as harmofl_test_only

CLIENTS = ("client_I2CVB", "client_MSD", "client_NCI_ISBI_3T")
DEMO_SIZE = 64
DEMO_ROUNDS = 20
SELECT_THRESHOLD = 0.9


def demo_prostate(root: Path, size: int = DEMO_SIZE) -> Path:
    """The demo prostate federation prepared under ``root`` (kept if already there)."""
    if not (root / "datalist_2D" / "client_All.json").is_file():
        make_demo_federation(root / "raw")
        prepare(root / "raw", root, source="saml", size=size)
    return root


def job_train_config(job: str, overrides: Dict) -> Dict:
    return {**json.loads((ROOT / "jobs" / job / "app" / "config" / "config_train.json").read_text()), **overrides}


def job_overrides(pairs: Sequence[Sequence[str]]) -> Dict[str, Dict]:
    """``{job: overrides}`` of ``--job-train JOB JSON`` pairs; an unknown job or a JSON that is no object stops
    the command with a message naming it."""
    overrides: Dict[str, Dict] = {}
    for job, text in pairs:
        if job not in FL_JOBS:
            raise SystemExit(f"--job-train: unknown job {job!r}; the jobs compared are {sorted(FL_JOBS)}")
        value = json.loads(text)
        if not isinstance(value, dict):
            raise SystemExit(f"--job-train {job}: expected a JSON object of config_train.json keys, got {text!r}")
        overrides.setdefault(job, {}).update(value)
    return overrides


def prostate_sites(data: Path, clients: Sequence[str], augment: bool) -> Dict[str, SiteData]:
    """Each client's training (augmented as the jobs do), validation and testing slices."""
    sites = {}
    for client in clients:
        datalist = datalist_path(data / "datalist_2D", client)
        splits = {split: load_segmentation_pairs(read_datalist(datalist, split, client), data / "dataset_2D", client)
                  for split in ("training", "validation", "testing")}
        training = SegmentationSliceDataset(splits["training"], TRAIN_AUGMENTATION if augment else None)
        sites[client] = SiteData(training, SegmentationSliceDataset(splits["validation"]),
                                 SegmentationSliceDataset(splits["testing"]))
    return sites


def prostate_recipe(config: Dict, rounds: int, seed: int) -> Recipe:
    """The FedAvg job's client recipe (``SegmentationExecutor``) as a plain training budget."""
    network = config["network"]
    return Recipe(build_model=lambda: build_network(network["name"], **network.get("args", {})),
                  loss_fn=DiceLoss(sigmoid=True),
                  make_optimizer=lambda model: build_optimizer(model.parameters(), OptimizerSpec(**config["optimizer"])),
                  metric=evaluate_dice, epochs=rounds * int(config["local_epochs"]),
                  batch_size=int(config["batch_size"]), seed=seed)


TestScores = Callable[[Path, Path], Dict[str, Dict[str, float]]]


def test_scores(app_server: Path, data: Path) -> Dict[str, Dict[str, float]]:
    """``{client: {"global"[, "super"]: test Dice}}`` of a FedAvg or FedSM run's best models."""
    with contextlib.redirect_stdout(io.StringIO()):
        return prostate_2d_test_only.main(["--models_dir", str(app_server),
                                           "--data_root", str(data / "dataset_2D"),
                                           "--datalist", str(data / "datalist_2D"),
                                           "--select_threshold", str(SELECT_THRESHOLD)]).sites


def harmofl_scores(app_server: Path, data: Path) -> Dict[str, Dict[str, float]]:
    """``{client: {"global": test Dice}}`` of a HarmoFL run's best global model, its inputs amplitude-normalised
    with the saved reference; the job's paths hold ``DATASET_ROOT``, resolved here to ``data``."""
    with mock.patch.dict(os.environ, {PLACEHOLDER: str(data)}), contextlib.redirect_stdout(io.StringIO()):
        tested = harmofl_test_only.evaluate_sites(app_server)
    return {client: {"global": scores["dice_fg"]} for client, scores in tested.items()}


# each federated job: how its best models are tested, and {table row: the model the row reports}
FL_JOBS: Dict[str, Tuple[TestScores, Dict[str, str]]] = {
    "fedavg_prostate": (test_scores, {"FedAvg": "global"}),
    "fedsm_prostate": (test_scores, {"FedSM (super model)": "super", "FedSM (global model)": "global"}),
    "harmofl_prostate_2d": (harmofl_scores, {"HarmoFL": "global"}),
}


def main(argv=None) -> Dict[str, List[Dict[str, float]]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="prepared data root (default: the demo federation)")
    parser.add_argument("--clients", nargs="+", default=list(CLIENTS))
    parser.add_argument("--rounds", type=int, default=DEMO_ROUNDS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--size", type=int, default=DEMO_SIZE, help="slice size of the demo federation")
    parser.add_argument("--train", type=json.loads, default={}, help="config_train.json overrides, as JSON")
    parser.add_argument("--job-train", nargs=2, action="append", default=[], metavar=("JOB", "JSON"),
                        help="more config_train.json overrides for one job only (e.g. fedsm_prostate and its "
                             "selector_network); repeatable")
    parser.add_argument("--jobs", nargs="+", choices=sorted(FL_JOBS), default=list(FL_JOBS),
                        help="the federated jobs to run (default: all); the baselines always run")
    parser.add_argument("--work", type=Path, default=Path("/tmp/compare_prostate"))
    parser.add_argument("--output", type=Path, default=None, help="table and plot folder (default: <work>/results)")
    args = parser.parse_args(argv)
    data = args.data or demo_prostate(args.work / "data", args.size)
    output = args.output or args.work / "results"
    server = {"num_rounds": args.rounds}
    job_train = job_overrides(args.job_train)

    scores: Dict[str, List[Dict[str, float]]] = {}
    curves, walls = {}, {}
    for seed in args.seeds:
        train = {"num_threads": 1, **args.train, "seed": seed}
        config = job_train_config("fedavg_prostate", train)
        per_epoch = int(config["local_epochs"])
        for job in args.jobs:
            tester, rows = FL_JOBS[job]
            run = run_job(job, args.work / f"seed{seed}" / job, args.clients, data, server,
                          {**train, **job_train.get(job, {})})
            walls.setdefault(job, []).append(run.wall_s)
            tested = tester(run.app_server, data)
            for row, key in rows.items():
                scores.setdefault(row, []).append({client: s[key] for client, s in tested.items()})
            if seed == args.seeds[0]:
                for row, key in rows.items():
                    if key == "global":
                        steps, values = server_curve(run.workspace, "val_mean/global")
                        curves[row] = ([s * per_epoch for s in steps], values)
        sites = prostate_sites(data, args.clients, bool(config.get("augment", True)))
        recipe = prostate_recipe(config, args.rounds, seed)
        torch.set_num_threads(max(int(config["num_threads"]), 1))
        run_baselines(sites, recipe, scores, curves, keep_curves=seed == args.seeds[0])

    caption = (f"Prostate ({'demo federation, %dx%d slices' % (args.size, args.size) if args.data is None else data}), "
               f"{len(args.clients)} sites, {args.rounds} rounds x {per_epoch} local epoch(s), seeds {args.seeds}: "
               f"test foreground Dice of the validation-selected model")
    means = report(scores, curves, walls, output, "prostate", caption, "mean validation Dice")
    for row, label in (("HarmoFL", "HarmoFL mean test Dice"), ("FedSM (super model)", "FedSM super-model mean test Dice")):
        if row in means and "FedAvg" in means:  # the jobs run (--jobs) hold both
            print(f"{label} - FedAvg: {means[row] - means['FedAvg']:+.4f}")
    return scores


if __name__ == "__main__":
    main()
