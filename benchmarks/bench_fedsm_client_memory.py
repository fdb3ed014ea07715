"""Peak resident memory of one FedSM client's training rounds in this process, stage by stage (no simulator).

    python benchmarks/bench_fedsm_client_memory.py [--rounds 2] [--selector vgg11|selector_cnn] [--images 8]
        [--threads 1] [--piece-bytes 67108864] [--work DIR]

The ``fedsm_prostate`` client (its ``config_train.json`` at ``image_size`` 64, the selector ``--selector``, by default
the job's 129 M-parameter VGG-11) runs ``--rounds`` training tasks through its own ``execute`` on ``--images``
synthetic prostate slices per split, between the job's filters: the moment pair and, with ``--piece-bytes`` N > 0
(the job's ``array_piece_bytes``, 64 MiB; 0: whole arrays, as before), the piece filters that send arrays above N
bytes in pieces (:mod:`medfl.common.pieces`). Tasks and results travel through NVFlare's cells and download service
to a one-client server in a child process (:mod:`cell_transport`, which joins and cuts the pieces as medfl's server
does): each result comes back as the next round's task (the server's average of one client is its update), so
every round from the second on receives the selector's Adam moments.

After each stage the peak RSS of the stage (``VmHWM`` since the stage began; reset through ``/proc/self/clear_refs``)
and the RSS at its end are printed, with the peak against the bytes the client must hold: its three models with
their gradients and two Adam moments each (:data:`TRAINED_COPIES` times the models' bytes; the goal of issue 16 is a
peak <= 1.3x that). ``baseline`` is the RSS after set-up (libraries, data and the freshly built models). The last
line is the largest peak and its stage.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Tuple

import torch
from cell_transport import PeerTransport
from epoch_cases import PROSTATE_CLIENT, job_config, prostate_federation, set_up
from proc_memory import reset_peak, status_kib

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.utils.fl_model_utils import FLModelUtils

import medfl.common.executor as common_executor
from medfl.common.params import Params, bundle, to_numpy
from medfl.common.pieces import PIECE_BYTES, JoinLargeArrays, SplitLargeArrays
from medfl.common.runtime import freeze_setup_objects
from medfl.fedsm.executor import FedSMExecutor
from medfl.fedsm.moments import AdamMomentsReceiver, AdamMomentsSender
from medfl.fedsm.protocol import SITE_LABEL

TRAINED_COPIES = 4  # weights, gradients, Adam's exp_avg and exp_avg_sq
GOAL_RATIO = 1.3  # peak RSS / bytes the client must hold (issue 16)
SMALL_SELECTOR = {"name": "selector_cnn", "args": {"in_channels": 1, "num_classes": 3}}
SELECTORS = {"vgg11": None, "selector_cnn": SMALL_SELECTOR}  # None: the job's own (VGG-11)
IMAGE_SIZE = 64  # the demo slices' size, as bench_memory runs the job
TRAIN_TASK = "train"
GIB = 2 ** 30
KIB = 1024


@dataclass
class Timeline:
    """Consecutive stages of this process's life: each one's round, name, peak RSS (bytes) and RSS at its end."""

    stages: List[Tuple[str, str, int, int]] = field(default_factory=list)
    round: str = "-"  # the round the stages marked now belong to

    def start(self) -> None:
        """Reset the process's peak RSS to its current RSS."""
        reset_peak()

    def mark(self, stage: str) -> None:
        """The stage that just ended: its peak and its final RSS; the next stage starts now."""
        self.stages.append((self.round, stage, status_kib("VmHWM") * KIB, status_kib("VmRSS") * KIB))
        self.start()

    def around(self, function: Callable, before: str, after: str) -> Callable:
        """``function`` marking ``before`` (what ran since the last mark) when called and ``after`` when done."""
        def marked(*args, **kwargs):
            self.mark(before)
            result = function(*args, **kwargs)
            self.mark(after)
            return result
        return marked


def instrument(client: FedSMExecutor, timeline: Timeline) -> None:
    """Mark the stages of the client's train task: load, validate, train, the selector's step, export, check."""
    stages = (("load_payload", "execute: from_shareable", "load_payload"),
              ("evaluate", "execute: other", "validate received models"),
              ("train_selector_epoch", "train global and personal", "selector: step, gradients freed"),
              ("export_params", "execute: other", "export_params"))
    for name, before, after in stages:
        setattr(client, name, timeline.around(getattr(client, name), before, after))
    optimizer = client.selector_optimizer
    optimizer.step = timeline.around(optimizer.step, "selector: full-batch gradients", "selector: Adam step")
    common_executor.check_update = timeline.around(common_executor.check_update, "execute: other", "check_update")


def task(params: Params, round_number: int) -> Shareable:
    """The server's train task of ``round_number`` with ``params``."""
    return FLModelUtils.to_shareable(FLModel(params=params, current_round=round_number, meta={SITE_LABEL: 0}))


def initial_task(client: FedSMExecutor) -> Shareable:
    """What the server sends in round 0: the models as the client built them (the server's initial weights)."""
    models = {"global": client.models["global"], "personal": client.models["personal"], "selector": client.selector}
    return task(bundle({name: to_numpy(model.state_dict()) for name, model in models.items()}), 0)


def run_round(client: FedSMExecutor, transport: PeerTransport, round_number: int, timeline: Timeline,
              piece_bytes: int) -> None:
    """One train task, from the server's task to the result it received; every stage marked."""
    fl_ctx = FLContext()
    shareable = transport.receive()
    timeline.mark("receive task (download)")
    if piece_bytes:
        shareable = JoinLargeArrays().process(shareable, fl_ctx)
        timeline.mark("task data filter (join pieces)")
    shareable = task(FLModelUtils.from_shareable(shareable).params, round_number)
    shareable = AdamMomentsReceiver().process(shareable, fl_ctx)
    timeline.mark("task data filter (moments in)")
    result: Shareable = client.execute(TRAIN_TASK, shareable, fl_ctx, Signal())
    del shareable
    timeline.mark("execute: to_shareable, cleanup")
    result = AdamMomentsSender().process(result, fl_ctx)
    timeline.mark("task result filter (moments out)")
    if piece_bytes:
        result = SplitLargeArrays(piece_bytes).process(result, fl_ctx)
        timeline.mark("task result filter (cut pieces)")
    transport.send(result)
    timeline.mark("send result (upload)")
    del result
    client.handle_event(EventType.AFTER_SEND_TASK_RESULT, fl_ctx)
    timeline.mark("after send (release)")


def held_bytes(client: FedSMExecutor) -> int:
    """What the client must hold at its peak: its three models' weights, gradients and two Adam moments."""
    models = (client.models["global"], client.models["personal"], client.selector)
    return TRAINED_COPIES * sum(t.numel() * t.element_size() for m in models for t in m.state_dict().values())


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--selector", choices=sorted(SELECTORS), default="vgg11")
    parser.add_argument("--images", type=int, default=8, help="slices per split")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--piece-bytes", type=int, default=PIECE_BYTES,
                        help="send arrays above this many bytes in pieces (the job's array_piece_bytes; 0: whole)")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_fedsm_client_memory_"))
    root = prostate_federation(args.images, work)
    config = {**job_config("fedsm_prostate"), "data_root": str(root / "dataset_2D"),
              "datalist": str(root / "datalist_2D"), "image_size": IMAGE_SIZE, "num_threads": args.threads,
              "device": "cpu", **({"selector_network": SELECTORS[args.selector]} if SELECTORS[args.selector] else {})}
    torch.set_num_threads(args.threads)
    client = set_up(FedSMExecutor(analytic_sender_id=""), config, PROSTATE_CLIENT)
    freeze_setup_objects()  # as the client's start of run does
    client.garbage_guard.start()
    held = held_bytes(client)
    transport = PeerTransport(piece_bytes=args.piece_bytes)
    first = initial_task(client)
    transport.send(SplitLargeArrays(args.piece_bytes).process(first, FLContext()) if args.piece_bytes else first)
    del first
    gc.collect()  # what the transfer left
    timeline = Timeline()
    timeline.start()
    timeline.mark("baseline (set up)")
    instrument(client, timeline)
    try:
        for round_number in range(args.rounds):
            timeline.round = str(round_number)
            run_round(client, transport, round_number, timeline, args.piece_bytes)
    finally:
        client.garbage_guard.stop()
        transport.close()
    pieces = f"arrays above {args.piece_bytes} bytes in pieces" if args.piece_bytes else "whole arrays"
    print(f"FedSM client ({args.selector}, {pieces}), {args.rounds} rounds: must hold {held / GIB:.2f} GiB "
          f"({TRAINED_COPIES}x the models' bytes)")
    print(f"{'round':>5s} {'stage':40s} {'peak GiB':>9s} {'end GiB':>8s} {'peak/held':>9s}")
    for round_name, stage, peak, end in timeline.stages:
        print(f"{round_name:>5s} {stage:40s} {peak / GIB:9.2f} {end / GIB:8.2f} {peak / held:9.2f}")
    round_name, stage, peak, _ = max(timeline.stages, key=lambda s: s[2])
    print(f"FedSM client peak RSS / bytes held: {peak / held:.2f}x in round {round_name} at {stage!r} "
          f"({peak / GIB:.2f} GiB for {held / GIB:.2f} GiB; goal <= {GOAL_RATIO}x)")
    return max(peak for _, _, peak, _ in timeline.stages) / held


if __name__ == "__main__":
    main()
