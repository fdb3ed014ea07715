"""Framework overhead: the NVFlare simulator's round time over the same local work in a plain PyTorch loop.

    python benchmarks/bench_overhead.py [--rounds 6] [--client client_I2CVB] [--work /tmp/bench_overhead]

One client of the demo prostate federation (``--size`` slices, 64 by default) runs ``fedavg_prostate`` (the
job's UNet, Adam, batch 8, one local epoch, one thread) for ``--rounds`` rounds; its round time is the median
time between two round starts in the server log, the first round left out (it holds the client's setup). The
plain loop does the same work per round with the same data, model and thread count: validate the model, train one epoch
(:func:`baselines.train_selected`, the common ``train_epoch`` and ``evaluate_dice``). The difference is what
NVFlare adds: serialising and sending the model both ways, the server's aggregation and checkpoints, TensorBoard
streaming, and the task polling (``task_check_period``). That cost is about fixed per round, so the ratio
depends on how much local work a round holds: the script also prints the local work per round at which the
ratio would meet the goal. Goal: ratio <= 1.15. The last line is the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from simrun import round_start_times, run_job
from baselines import train_selected
from compare_prostate import demo_prostate, job_train_config, prostate_recipe, prostate_sites

GOAL = 1.15


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--client", default="client_I2CVB")
    parser.add_argument("--size", type=int, default=64, help="slice size of the demo federation")
    parser.add_argument("--data", type=Path, default=None, help="prepared prostate root (default: the demo)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_overhead"))
    args = parser.parse_args(argv)
    if args.rounds < 3:
        parser.error("--rounds must be >= 3 (the first round is left out of the median)")
    data = args.data or demo_prostate(args.work / "data", args.size)
    train = {"num_threads": 1}

    run = run_job("fedavg_prostate", args.work, [args.client], data, {"num_rounds": args.rounds}, train)
    starts = round_start_times(run.workspace)
    simulator_round = statistics.median(b - a for a, b in zip(starts[1:], starts[2:]))

    config = job_train_config("fedavg_prostate", train)
    site = prostate_sites(data, [args.client], bool(config.get("augment", True)))[args.client]
    torch.set_num_threads(1)
    start = time.perf_counter()
    train_selected(prostate_recipe(config, args.rounds, seed=0), site.training, {args.client: site.validation})
    plain_round = (time.perf_counter() - start) / args.rounds

    print(f"{args.client}: {len(site.training)} training / {len(site.validation)} validation slices, "
          f"{args.rounds} rounds, 1 thread")
    print(f"simulator round {simulator_round:.2f} s (median of rounds 2..{args.rounds}), "
          f"plain loop {plain_round:.2f} s per round")
    ratio = simulator_round / plain_round
    fixed = simulator_round - plain_round
    print(f"NVFlare's cost per round: {fixed:.2f} s; the ratio is <= {GOAL} once a round holds "
          f">= {fixed / (GOAL - 1):.1f} s of local work")
    print(f"framework overhead (simulator round / plain loop round): {ratio:.2f} (goal <= {GOAL})")
    return ratio


if __name__ == "__main__":
    main()
