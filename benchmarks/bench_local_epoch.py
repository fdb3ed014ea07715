"""Speed of one local epoch in the clients' own code path against the same model's steps alone.

For the dermoscopy client (``fedavg_dermoscopy``; PRR-FL reads the same data the same way) at 32, 64 and 128 px and
the prostate client (``fedavg_prostate``) at 64 and 256 px, times ``train_epoch`` over the executor's own
``train_loader`` (its dataset, transforms and DataLoader) and the executor's ``train_step`` over the same number of
batches built beforehand. The data pipeline's share is ``(epoch - model_only) / epoch``; goals (issue 18): share
<= 15 %, epoch <= 1.3x model-only. The loader alone (``data s``, no model) is timed too: on a loaded machine the
difference of the two long loops is noisy, the short loop's own time much less so. Each is timed ``--repeats``
times, interleaved, after a warm-up epoch; the best run counts (the machine may be shared). The model-only loop's
FLOP rate is compared with a large float32 matmul's on the same threads (training counted as 3x the forward pass's
convolution and linear multiply-adds).

    python benchmarks/bench_local_epoch.py [--sizes dermoscopy:32 dermoscopy:64 dermoscopy:128 prostate:64
        prostate:256] [--images 64] [--threads 2] [--repeats 3] [--work DIR] [--data DATASET_ROOT]
        [--augmentation batched|per_image]

Without ``--data`` the dermoscopy federation is HAM10000-mini (``../shared/data/ham10000_mini``) prepared at each
size; ``--data`` names prepared DATASET_ROOTs holding ``prrfl_ham10000/`` (``{size}`` in it is replaced by the
size, e.g. ``/tmp/ham{size}``). The prostate site is the synthetic demo's. ``--images`` caps every split.
``--augmentation`` sets the dermoscopy client's ``augmentation`` (default ``batched``, the job's).
The last line is the worst case against the goals.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import List, Tuple

import torch
from arithmetic import TRAINING_PASSES, forward_flops, matmul_gflops
from epoch_cases import EpochCase, dermoscopy_case, prostate_case

from medfl.common.train import to_device, train_epoch

DEFAULT_SIZES = ("dermoscopy:32", "dermoscopy:64", "dermoscopy:128", "prostate:64", "prostate:256")
DEFAULT_IMAGES = 64
DEFAULT_REPEATS = 3
SHARE_GOAL = 0.15
RATIO_GOAL = 1.3
PERCENT = 100


def model_only_epoch(case: EpochCase, batches: List[dict]) -> None:
    """The executor's step over pre-built batches: forward, backward, optimizer step, nothing else."""
    case.model.train()
    for batch in batches:
        case.step(case.model, to_device(batch, case.device), case.loss_fn, case.optimizer)


def loader_epoch(case: EpochCase) -> None:
    train_epoch(case.model, case.loader, case.loss_fn, case.optimizer, case.device, step=case.step)


def data_only_epoch(case: EpochCase) -> None:
    """The executor's loader alone: decoding, augmentation and collation of every batch, no model."""
    for _ in case.loader:
        pass


def seconds(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def time_case(case: EpochCase, repeats: int) -> Tuple[float, float, float, int]:
    """Best epoch, model-only and data-only seconds, and the number of images per epoch."""
    batches = list(case.loader)
    loader_epoch(case)  # warm-up: worker start, allocator, thread pool
    epoch, model_only, data_only = [], [], []
    for _ in range(repeats):
        epoch.append(seconds(lambda: loader_epoch(case)))
        model_only.append(seconds(lambda: model_only_epoch(case, batches)))
        data_only.append(seconds(lambda: data_only_epoch(case)))
    return min(epoch), min(model_only), min(data_only), sum(len(batch["image"]) for batch in batches)


def build_case(spec: str, args: argparse.Namespace, work: Path) -> EpochCase:
    federation, _, size = spec.partition(":")
    if federation == "dermoscopy":
        return dermoscopy_case(int(size), args.images, work, args.threads, args.data, args.augmentation)
    if federation == "prostate":
        return prostate_case(int(size), args.images, work, args.threads)
    raise ValueError(f"unknown case {spec!r}: dermoscopy:<px> or prostate:<px>")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES),
                        help=f"cases as federation:pixels (default {' '.join(DEFAULT_SIZES)})")
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES,
                        help=f"at most this many images per split (default {DEFAULT_IMAGES})")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch threads (default: the cores this process may use)")
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS,
                        help=f"timed runs of each loop; the best counts (default {DEFAULT_REPEATS})")
    parser.add_argument("--data", help="prepared dermoscopy DATASET_ROOT, '{size}' replaced by the size")
    parser.add_argument("--augmentation", choices=("batched", "per_image"), default="batched",
                        help="the dermoscopy client's training augmentation (default batched, the job's)")
    parser.add_argument("--work", type=Path, help="folder for the built federations (default: a temp folder)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    rate = matmul_gflops()
    print(f"torch threads {args.threads}; float32 matmul {rate:.1f} GFLOP/s")
    print(f"{'case':<28} {'px':>4} {'images':>6} {'setup s':>8} {'epoch s':>8} {'model s':>8} {'data s':>8} "
          f"{'pipeline':>8} "
          f"{'ratio':>6} {'GFLOP/s':>8} {'of mm':>6}")
    worst_share, worst_ratio = float("-inf"), float("-inf")
    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or Path(temporary)
        for spec in args.sizes:
            case = build_case(spec, args, work)
            epoch, model_only, data_only, images = time_case(case, args.repeats)
            example = next(iter(case.loader))["image"].to(case.device)
            model_rate = TRAINING_PASSES * forward_flops(case.model, example) * images / model_only / 1e9
            share, ratio = (epoch - model_only) / epoch, epoch / model_only
            worst_share, worst_ratio = max(worst_share, share), max(worst_ratio, ratio)
            print(f"{case.name:<28} {case.image_size:>4} {images:>6} {case.setup_seconds:>8.2f} {epoch:>8.3f} "
                  f"{model_only:>8.3f} {data_only:>8.3f} {share * PERCENT:>7.1f}% {ratio:>5.2f}x {model_rate:>8.1f} "
                  f"{model_rate / rate * PERCENT:>5.1f}%", flush=True)
            print(f"  {case.name} {case.image_size} px: model loop reaches {model_rate / rate * PERCENT:.1f} % of the "
                  "matmul rate", flush=True)
    print(f"worst data pipeline share {worst_share * PERCENT:.1f} % (goal <= {SHARE_GOAL * PERCENT:.0f} %), worst "
          f"epoch / model-only {worst_ratio:.2f}x (goal <= {RATIO_GOAL}x)")


if __name__ == "__main__":
    main()
