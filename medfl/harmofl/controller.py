"""HarmoFL server: the amplitude exchange before the first round, then FedAvg with equal client weights."""

from __future__ import annotations

import os
from typing import Dict, List, Literal, Optional

import numpy as np
import torch
from pydantic import Field

from nvflare.app_common.abstract.fl_model import FLModel

from medfl.common.errors import DataError
from medfl.common.io import atomic_torch_save
from medfl.common.protocol import NUM_TRAIN_SAMPLES
from medfl.common.validation import check_sample_count
from medfl.fedavg.controller import FedAvgController, FedAvgSettings

from . import networks  # noqa: F401  (registers harmofl_unet, harmofl_densenet121)
from .amplitude_exchange import (
    AMPLITUDE_FILE,
    AMPLITUDE_KEY,
    AMPLITUDE_TASK,
    DIGEST_KEY,
    MIN_TRAIN_SAMPLES,
    REFERENCE_TASK,
    amplitude_digest,
    average_amplitudes,
)


class HarmoFLSettings(FedAvgSettings):
    """HarmoFL server settings: FedAvg's with the released code's equal weights, and the exchange's task names."""

    weighting: Literal["samples", "steps", "equal"] = Field("equal", description=(
        "client weights: 1/K as the released code (equal), training-set sizes or local steps"))
    amplitude_task: str = Field(AMPLITUDE_TASK, description="task name of the amplitude collection")
    reference_task: str = Field(REFERENCE_TASK, description="task name of the reference broadcast")


class HarmoFLController(FedAvgController):
    """HarmoFL workflow (Jiang et al., AAAI 2022): amplitude exchange, then rounds of FedAvg.

    Before the first round (see :mod:`medfl.harmofl.amplitude_exchange`): task ``amplitude_task`` collects
    every client's mean amplitude spectrum ``A_k`` (nothing else; checked: a finite, non-negative float array of one
    shape for all, and a valid training-set size), the server forms ``A = 1/K sum_k A_k``,
    task ``reference_task`` broadcasts it with the smallest training-set size, and every client must answer
    the digest of ``A``. ``A`` is saved as ``harmofl_amplitude.pt`` beside the models (test scripts need it)
    and in the resume state; a resumed run broadcasts it again instead of recomputing it. The rounds are
    :class:`~medfl.fedavg.controller.FedAvgController`'s; the best global model is chosen on the clients'
    validation metric.

    Settings: :class:`HarmoFLSettings`.
    """

    Settings = HarmoFLSettings

    def __init__(self, **settings):
        super().__init__(**settings)
        self.amplitude: Optional[np.ndarray] = None
        self.min_train_samples = 0

    def before_rounds(self) -> bool:
        clients = self.select_clients(self.start_round)
        if self.amplitude is None:
            replies = self._ask_all(self.settings.amplitude_task, FLModel(params={}), clients)
            if replies is None:
                return False
            try:
                for client, reply in sorted(replies.items()):
                    problem = check_sample_count((reply.meta or {}).get(NUM_TRAIN_SAMPLES), self.settings.max_client_samples)
                    if problem:
                        raise DataError(f"{NUM_TRAIN_SAMPLES} {problem}", site=client)
                self.amplitude = average_amplitudes({client: r.params or {} for client, r in replies.items()})
            except DataError as e:
                self.panic(f"amplitude exchange: {e}")
                return False
            self.min_train_samples = min(int(r.meta[NUM_TRAIN_SAMPLES]) for r in replies.values())
            self.info(f"averaged the amplitude spectra {self.amplitude.shape} of {len(replies)} clients "
                      f"with equal weights")
        digest = amplitude_digest(self.amplitude)
        broadcast = FLModel(params={AMPLITUDE_KEY: self.amplitude}, meta={MIN_TRAIN_SAMPLES: self.min_train_samples})
        replies = self._ask_all(self.settings.reference_task, broadcast, clients)
        if replies is None:
            return False
        differing = sorted(client for client, r in replies.items() if r.meta.get(DIGEST_KEY) != digest)
        if differing:
            self.panic(f"amplitude exchange: clients {differing} do not hold the broadcast reference (sha256 {digest})")
            return False
        atomic_torch_save({AMPLITUDE_KEY: torch.from_numpy(self.amplitude), DIGEST_KEY: digest, "clients": clients},
                          os.path.join(self.get_app_dir(), AMPLITUDE_FILE))
        self.info(f"all {len(replies)} clients froze the amplitude reference sha256={digest}")
        return True

    def _ask_all(self, task: str, model: FLModel, clients: List[str]) -> Optional[Dict[str, FLModel]]:
        """Send ``model`` to every client and wait; ``None`` (after :meth:`panic`) unless all of them answered."""
        model.current_round, model.total_rounds = self.start_round, self.num_rounds
        replies: Dict[str, FLModel] = {}

        def keep(result: FLModel) -> None:
            replies[result.meta["client_name"]] = result
            self._result_arrived.set()

        targets = self.reachable(task, clients, self.start_round)
        if targets:
            self.send_model(task_name=task, data=model, targets=targets, timeout=self.settings.task_timeout,
                            callback=keep)
        if not self.wait_for_results(task, targets, replies.keys, self.start_round) or self.abort_signal.triggered:
            return None
        missing = sorted(set(clients) - set(replies))
        if missing:
            dead = [c for c in missing if c in self.dead_clients]
            silence = f" (no sign of life for {self.liveness.timeout:g} s: {dead})" if dead else ""
            self.panic(f"amplitude exchange: task '{task}' got no result from {missing}{silence}; every client must "
                       "take part")
            return None
        return replies

    def extra_state(self) -> dict:
        return {AMPLITUDE_KEY: self.amplitude, MIN_TRAIN_SAMPLES: self.min_train_samples}

    def load_extra_state(self, state: dict) -> None:
        self.amplitude = state[AMPLITUDE_KEY]
        self.min_train_samples = int(state[MIN_TRAIN_SAMPLES])
