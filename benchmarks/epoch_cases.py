"""The clients whose local epoch ``bench_local_epoch.py`` times, built as their jobs build them: the job's
``config_train.json`` and executor, pointed at a small federation, set up outside NVFlare.

The dermoscopy client is the one of ``fedavg_dermoscopy`` (``prrfl_dermoscopy`` reads the same data through the
same datasets, transforms and loader); the prostate client is the one of ``fedavg_prostate``. Each federation is
capped to ``images`` per split by rewriting its split lists, so a run stays short.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Callable, Optional

import torch
from simrun import ROOT
from torch.utils.data import DataLoader

from nvflare.apis.fl_context import FLContext

from medfl.common.executor import RoundExecutor, seed_random_transforms
from medfl.common.runtime import seed_everything
from medfl.common.train import StepFn
from medfl.federations.dermoscopy.client import DermoscopyExecutor
from medfl.federations.dermoscopy.data import SPLITS, split_csv_path
from medfl.federations.dermoscopy.preparation import prepare_federation
from medfl.federations.prostate2d.client import ProstateSegmentationExecutor
from medfl.federations.prostate2d.demo import make_demo_federation
from medfl.federations.prostate2d.preparation import prepare

SHARED_DATA = ROOT.parent / "shared" / "data"
HAM_MINI = SHARED_DATA / "ham10000_mini"
FEDERATION = "prrfl_ham10000"
PROSTATE_SITE = "I2CVB"
PROSTATE_CLIENT = f"client_{PROSTATE_SITE}"
PROSTATE_DATALISTS = ("training", "validation", "testing")
TRAINING_SLICES_PER_CASE = 4  # the demo's cases give 7-13 slices with prostate, about half in training


@dataclass
class EpochCase:
    """One client's local epoch: what ``train_epoch`` receives in the executor's ``train_round``."""

    name: str
    image_size: int
    model: torch.nn.Module
    loader: DataLoader
    loss_fn: Callable
    optimizer: torch.optim.Optimizer
    device: torch.device
    step: StepFn
    setup_seconds: float = 0.0


def job_config(job: str) -> dict:
    return json.loads((ROOT / "jobs" / job / "app" / "config" / "config_train.json").read_text())


def set_up(client: RoundExecutor, config: dict, site: str) -> RoundExecutor:
    """What the executor's start of run does with ``config``, without NVFlare: settings, seed, setup."""
    client.site = site
    client.settings = type(client).Settings.load(config, "config_train.json", site)
    seed_everything(client.settings.seed)
    client.setup(FLContext())
    seed_random_transforms(client.datasets, client.settings.seed)
    return client


def largest_client(federation: Path) -> str:
    """The dermoscopy client with the most training rows."""
    clients = [p.name for p in federation.iterdir() if split_csv_path(federation, p.name, "train").is_file()]
    return max(sorted(clients), key=lambda c: len(split_csv_path(federation, c, "train").read_text().splitlines()))


def capped_dermoscopy(federation: Path, client: str, images: int, out: Path) -> Path:
    """A copy of ``client``'s split CSVs under ``out`` holding their first ``images`` rows, image paths absolute."""
    for split in SPLITS:
        source, target = split_csv_path(federation, client, split), split_csv_path(out, client, split)
        with source.open(newline="") as handle:
            rows = list(csv.DictReader(handle))[:images]
        for row in rows:
            row["image"] = str((federation / row["image"]).resolve())
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return out


def dermoscopy_case(size: int, images: int, work: Path, threads: int, data: Optional[str] = None,
                    augmentation: str = "batched") -> EpochCase:
    """The dermoscopy client at ``size`` px on ``data`` (a DATASET_ROOT, ``{size}`` replaced) or HAM10000-mini,
    its training augmentation drawn ``augmentation`` (``batched`` or ``per_image``)."""
    if data:
        federation = Path(data.format(size=size)) / FEDERATION
    else:
        federation = work / f"ham10000_mini_{size}" / FEDERATION
        if not federation.is_dir():
            prepare_federation(HAM_MINI, federation, image_size=size, log=lambda message: None)
    client = largest_client(federation)
    capped = capped_dermoscopy(federation, client, images, work / f"dermoscopy_{size}_capped")
    config = {**job_config("fedavg_dermoscopy"), "data_root": str(capped), "image_size": size,
              "num_threads": threads, "augmentation": augmentation}
    executor = timed_setup(DermoscopyExecutor(analytic_sender_id=""), config, client)
    return EpochCase(f"dermoscopy {client}", size, executor.model, executor.train_loader, executor.loss_fn,
                     executor.optimizer, executor.device, executor.train_step, executor.setup_seconds)


def prostate_federation(images: int, work: Path) -> Path:
    """The synthetic prostate site, enough cases for ``images`` training slices, its datalist capped there."""
    root = work / f"prostate_{images}"
    datalist = root / "datalist_2D" / f"{PROSTATE_CLIENT}.json"
    if not datalist.is_file():
        cases = max(math.ceil(images / TRAINING_SLICES_PER_CASE), len(PROSTATE_DATALISTS))
        with contextlib.redirect_stdout(io.StringIO()):  # the demo's per-case progress lines
            make_demo_federation(root / "raw", cases_per_site=cases, seed=0, sites=[PROSTATE_SITE])
            prepare(root / "raw", root, source="saml", sites=[PROSTATE_SITE])
        splits = json.loads(datalist.read_text())
        datalist.write_text(json.dumps({split: splits[split][:images] for split in PROSTATE_DATALISTS}))
    return root


def prostate_case(size: int, images: int, work: Path, threads: int) -> EpochCase:
    """The ``fedavg_prostate`` client at ``size`` px on the synthetic site."""
    root = prostate_federation(images, work)
    config = {**job_config("fedavg_prostate"), "data_root": str(root / "dataset_2D"),
              "datalist": str(root / "datalist_2D"), "image_size": size, "num_threads": threads}
    executor = timed_setup(ProstateSegmentationExecutor(analytic_sender_id=""), config, PROSTATE_CLIENT)
    return EpochCase(f"prostate {PROSTATE_CLIENT}", size, executor.models["global"], executor.train_loader,
                     executor.loss_fn, executor.optimizers["global"], executor.device, executor.train_step,
                     executor.setup_seconds)


def timed_setup(client: RoundExecutor, config: dict, site: str) -> RoundExecutor:
    """:func:`set_up`, its wall time kept as ``client.setup_seconds``."""
    start = perf_counter()
    set_up(client, config, site)
    client.setup_seconds = perf_counter() - start
    return client
