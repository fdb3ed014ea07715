"""Base server workflow: rounds of scatter (a payload per client, in parallel) and gather, then aggregate.

A method overrides two things at most (see DESIGN): :meth:`RoundController.payload_for` — what one client
receives — and :meth:`RoundController.aggregate` — how the results update ``self.models``. Everything else is
here once: sending each client its own payload in parallel, waiting, the minimum-clients rule, best-model
tracking per model by the validation metric the clients report, atomic checkpoints in the server's app folder,
resumable state, TensorBoard scalars, the medfl version check before round 0 (:mod:`medfl.common.job_version`)
and giving up on a client that stops showing signs of life (:mod:`medfl.common.liveness`).

Every result is checked where it arrives (:meth:`RoundController._collect`) against what the method expects back
(:meth:`RoundController.expected_result`, :mod:`medfl.common.validation`); a rejected result is logged with the
client and the reason and is used for nothing, so nothing from it is aggregated, tracked or saved.

``self.models`` maps a model name (``"global"``, ``"selector"``, ``"personal_client_MSD"`` ...) to its
parameters. Clients report ``{key: metric}`` for what they received; :meth:`model_for_metric` maps a key to
the model it measured. Because clients validate *received* models before training, a round's metrics belong
to the models as they were sent in that round; after the last round one validation-only round measures the
final models.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import uuid
from abc import abstractmethod
from functools import partial
from typing import Callable, Collection, Dict, List, Literal, Optional, Set, Tuple, Type

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.workflows.model_controller import ModelController
from nvflare.fuel.utils.memory_utils import cleanup_memory

from .cross_site import write_cross_site
from .errors import DataError
from .io import atomic_torch_save
from .job_version import loaded_medfl, version_problem
from .liveness import Liveness
from .memory_guard import GarbageGuard
from .networks import build_network
from .params import Params, bundle, to_numpy
from .pieces import PIECES_META, PieceError, join_arrays
from .protocol import (
    CROSS_SITE_METRIC,
    CROSS_SITE_SPLIT,
    HEARTBEAT_INTERVAL,
    HEARTBEAT_TOPIC,
    NUM_EVAL_SAMPLES,
    NUM_TRAIN_SAMPLES,
    NUM_TRAIN_STEPS,
    NUM_VAL_SAMPLES,
    RESUME_ROUND,
    RUN_ID,
)
from .resume import read_server_state
from .runtime import (
    MALLOC_ARENAS,
    SERVER_MMAP_THRESHOLD,
    fix_mmap_threshold,
    freeze_setup_objects,
    limit_malloc_arenas,
    seed_everything,
)
from .settings import ConfigError, NetworkSpec, Settings
from .validation import (
    DEFAULT_MAX_CLIENT_SAMPLES,
    METRIC_RANGES,
    ResultSpec,
    array_specs,
    check_result,
    check_sample_count,
)

STATE_FILE = "server_state.pt"
MISSED_HEARTBEATS = 3  # the shortest client_timeout, in heartbeat intervals: one late beat is no death
CONFIG_FED_SERVER = "config_fed_server.json"
SERVER_SITE = "server"


def _as_torch(obj):
    """Numpy arrays (nested in dicts) as tensors, so that state files load with ``weights_only=True``."""
    if isinstance(obj, dict):
        return {k: _as_torch(v) for k, v in obj.items()}
    return torch.as_tensor(obj) if isinstance(obj, (np.ndarray, np.generic)) else obj


def checkpoint_name(kind: str, model_name: str) -> str:
    """File name of a saved model in the server's app folder, e.g. ``best_global_model.pt``."""
    return f"{kind}_{model_name}_model.pt"


class ServerSettings(Settings):
    """Settings of every server workflow (its ``args`` in ``config_fed_server.json``)."""

    num_rounds: int = Field(100, ge=1, description="number of training rounds")
    min_clients: int = Field(0, ge=0, description=(
        "results needed to aggregate a round (0: every selected client); fewer stops the run naming the missing "
        "clients. To go on without a dead site, set it (and min_clients in meta.json) to what may remain"))
    train_task: str = Field("train", description="task name of local training, as the clients' executors know it")
    validate_task: str = Field("validate", description="task name of validation only")
    task_timeout: int = Field(0, ge=0, description="seconds a client may take for one task (0: no limit)")
    client_timeout: float = Field(120.0, ge=0, description=(
        f"seconds without a sign of life (clients send one every {HEARTBEAT_INTERVAL:g} s) after which a client that "
        "holds a task is deemed dead: its task is cancelled, it gets no further task, and the round goes on without "
        "it (min_clients) or stops naming it. 0: wait for NVFlare's own detection and task_timeout"))
    final_validation: bool = Field(True, description=(
        "after the last round, ask the clients to validate the final models (so they may be selected as best)"))
    best_weighting: Literal["validation_samples", "steps", "equal"] = Field("validation_samples", description=(
        "weights of the clients' validation metrics in a model's best-model score: validation-set size, local "
        "steps of the round (NVFlare's NUM_STEPS_CURRENT_ROUND; a validation-only result counts the client's last "
        "training result of this run) or equal (the plain mean over sites)"))
    best_from_round: int = Field(0, ge=0, description=(
        "the first round whose sent models may become best (0: the initial models too; 1: the first aggregate)"))
    best_selection_start: float = Field(0.0, ge=0, lt=1, description=(
        "share of the rounds before the best-model window opens: only the aggregates of rounds r >= "
        "ceil(best_selection_start * num_rounds), i.e. the models sent in round r + 1 (the final validation's for "
        "the last round), may become best, the last validated models at least (0.8: PRR-FL's a_iter >= 0.8 iters, "
        "the last 20 %); 0: no window. The later of this and best_from_round applies"))
    resume_from: str = Field("", description="a server_state.pt of an earlier run: continue after its last round")
    task_check_period: float = Field(0.5, gt=0, le=10, description=(
        "seconds between two checks for ended client tasks (timeouts, errors, dead clients)"))
    memory_gc_rounds: int = Field(1, ge=0, description=(
        "every this many rounds, release freed memory to the OS (gc.collect + malloc_trim), collect garbage "
        "whenever the resident memory grows during the run (transfers), make at most MALLOC_ARENAS malloc "
        "arenas (medfl.common.runtime.limit_malloc_arenas) and map every block of SERVER_MMAP_THRESHOLD bytes or "
        "more on its own (fix_mmap_threshold); 0: none of these"))
    seed: int = Field(0, ge=0, description="seed of the initial models")
    network: Optional[NetworkSpec] = Field(None, description="the network of the initial global model")
    max_client_samples: int = Field(DEFAULT_MAX_CLIENT_SAMPLES, ge=1, description=(
        "the most samples a client may report (training or validation); a result claiming more is rejected"))
    cross_site_evaluation: bool = Field(False, description=(
        "at the end, score every final model on every site's cross_site_split and write the matrix "
        "cross_site.{json,csv,md,png} into the server's app folder"))
    cross_site_task: str = Field("cross_evaluate", description="task name of the cross-site evaluation")
    cross_site_split: Literal["testing", "validation"] = Field("testing", description=(
        "the split every site scores the final models on"))

    @field_validator("client_timeout")
    @classmethod
    def _several_heartbeats(cls, value: float) -> float:
        shortest = MISSED_HEARTBEATS * HEARTBEAT_INTERVAL
        if 0 < value < shortest:
            raise ValueError(f"must be 0 (off) or at least {shortest:g} s ({MISSED_HEARTBEATS} heartbeat intervals)")
        return value

    @model_validator(mode="after")
    def _a_round_may_become_best(self) -> "ServerSettings":
        last = self.num_rounds if self.final_validation else self.num_rounds - 1  # the last round validated
        if self.best_from_round > last:
            raise ValueError(f"best_from_round {self.best_from_round} is after the last validated round {last}: "
                             "no model would be kept as best")
        return self


class RoundController(ModelController):
    """Round loop shared by every method; its settings are :class:`ServerSettings` (or the method's subclass,
    :attr:`Settings`), checked when NVFlare builds the workflow from ``config_fed_server.json``."""

    Settings: Type[ServerSettings] = ServerSettings

    def __init__(self, **settings):
        self.settings = self.Settings.load(settings, CONFIG_FED_SERVER, site=SERVER_SITE)
        super().__init__(persistor_id="", task_check_period=self.settings.task_check_period)
        if self.settings.memory_gc_rounds:  # as early as the server's code runs: arenas made before stay
            limit_malloc_arenas(MALLOC_ARENAS)
            fix_mmap_threshold(SERVER_MMAP_THRESHOLD)
        self.models: Dict[str, Params] = {}
        self.best_scores: Dict[str, float] = {}
        self.train_steps: Dict[str, float] = {}  # each client's local steps in its last training result of this run
        self.start_round = 0
        self.run_id = uuid.uuid4().hex  # a resumed run takes the saved one
        self.train_rounds: Dict[str, int] = {}  # the last round each client was sent the train task in
        self.resume_rounds: Optional[Dict[str, int]] = None  # a resumed run's train_rounds as saved
        self._results: Dict[str, FLModel] = {}
        self._expected: Dict[str, ResultSpec] = {}
        self._rejected: Dict[str, str] = {}
        self._round = 0
        self._result_arrived = threading.Event()
        self._writer = None
        self._cross_site_models: Dict[str, Params] = {}
        self.liveness = Liveness(self.settings.client_timeout)
        self.dead_clients: Set[str] = set()
        self._silent: List[str] = []
        self._version_problem: Optional[str] = None

    @property
    def num_rounds(self) -> int:
        return self.settings.num_rounds

    def add_to_fed_job(self, job, ctx, **kwargs) -> None:
        """NVFlare's job API (``FedJob.to_server(controller, id=...)``): write this workflow into
        ``config_fed_server.json`` with the settings it was given, defaults left out.

        FedJob writes a component's arguments from its constructor's named parameters; a workflow takes its typed
        settings as keywords (``**settings``), which FedJob cannot see, so the workflow writes its own entry. One
        medfl workflow per server app.
        """
        job.check_kwargs(args_to_check=kwargs, args_expected={})
        path = f"{type(self).__module__}.{type(self).__name__}"
        args = self.settings.model_dump(mode="json", exclude_unset=True)
        job.to({"workflows": [{"id": ctx.comp_id or "workflow", "path": path, "args": args}]}, ctx.target)

    # ------------------------------------------------------------------ what a method provides
    @abstractmethod
    def initial_models(self) -> Dict[str, Params]:
        """The models before round 0, by name."""

    @abstractmethod
    def payload_for(self, client: str) -> Params:
        """The flat parameter dict sent to ``client`` this round."""

    @abstractmethod
    def aggregate(self, results: Dict[str, FLModel]) -> None:
        """Update ``self.models`` from the clients' results (``{client_name: FLModel}``)."""

    def payload_meta(self, client: str) -> dict:
        """Extra information for ``client`` sent beside the payload (e.g. FedSM's selector label)."""
        return {}

    def expected_result(self, client: str, task: str, sent: FLModel) -> ResultSpec:
        """What ``client`` must send back for ``task`` after receiving ``sent``; any other result is rejected.

        Default: for the train task, the arrays it was sent (same keys, shapes, dtypes; finite), the round it was
        sent in and its training and validation sample counts; for the validation task, no arrays and its validation
        sample count. Metrics are always checked against their declared ranges. A method whose clients send back
        something else (FedSM's optional Adam moments) or more meta (FedMAS's robust factor) extends this.
        """
        sample_count = partial(check_sample_count, maximum=self.settings.max_client_samples)
        if task == self.settings.train_task:
            return ResultSpec(params=array_specs(sent.params), current_round=sent.current_round,
                              meta={NUM_TRAIN_SAMPLES: sample_count, NUM_VAL_SAMPLES: sample_count})
        return ResultSpec(meta={NUM_VAL_SAMPLES: sample_count})

    def model_for_metric(self, client: str, key: str) -> str:
        """Name of the model in ``self.models`` that a client's metric ``key`` measured."""
        return key

    def select_clients(self, round_number: int) -> List[str]:
        """Clients that train in this round (default: all, in name order)."""
        return sorted(c.name for c in self.engine.get_clients())

    def server_evaluate(self, step: int) -> None:
        """Evaluate ``self.models`` on the server (default: nothing), e.g. on a held-out test set.

        ``step`` is the number of aggregated rounds behind the models: 0 for the initial models (or the round a
        resumed run continues at), ``r + 1`` after round ``r``. The clients' validation of the same models is
        logged at the same step, as they validate what they receive in round ``step``.
        """

    def extra_state(self) -> dict:
        """Method state besides ``self.models`` to persist for resume (e.g. synced optimizer moments)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        """Restore what :meth:`extra_state` returned."""

    def before_rounds(self) -> bool:
        """Work before the first round of this run, after a resume too (e.g. HarmoFL's amplitude exchange).

        Return ``False`` to stop the workflow (after calling :meth:`panic` with the reason).
        """
        return True

    # ------------------------------------------------------------------ the loop
    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN:
            self._version_problem = version_problem(fl_ctx.get_prop(FLContextKey.JOB_META))
            self.log_info(fl_ctx, f"running {loaded_medfl()}")
            fl_ctx.get_engine().register_aux_message_handler(HEARTBEAT_TOPIC, self.liveness.handle_heartbeat)

    def build_initial_params(self, network: Optional[NetworkSpec] = None) -> Params:
        """Parameters of a freshly initialised ``network`` (default: the ``network`` setting), seeded by ``seed``."""
        network = network or self.settings.network
        if network is None:
            raise ConfigError("the workflow needs a 'network' setting to build its initial model",
                              path=CONFIG_FED_SERVER, site=SERVER_SITE)
        seed_everything(self.settings.seed)
        return to_numpy(build_network(network.name, **network.args).state_dict(), copy=False)  # the network is dropped

    def run(self) -> None:
        if self._version_problem:
            self.panic(f"[{SERVER_SITE}] {self._version_problem}")
            return
        self._open_writer()
        self.models = self.initial_models()
        if self.settings.resume_from and not self._resume(self.settings.resume_from):
            return
        freeze_setup_objects()
        guard = GarbageGuard() if self.settings.memory_gc_rounds else contextlib.nullcontext()
        with guard:  # what the transfers of payloads and results leave in reference cycles
            self.run_rounds()

    def run_rounds(self) -> None:
        """The rounds, the final validation and the cross-site evaluation (after :meth:`run`'s set-up)."""
        if not self.before_rounds():
            return
        self.server_evaluate(self.start_round)
        for round_number in range(self.start_round, self.num_rounds):
            self.info(f"round {round_number + 1}/{self.num_rounds} started")
            results = self.scatter_and_gather(self.settings.train_task, self.select_clients(round_number), round_number)
            if results is None:
                return
            self.track_best(results, round_number)
            self.aggregate(results)
            answered = len(results)
            # the clients' arrays are in the models now: released here, not held through the next round
            results, self._results = None, {}
            self.save_models("last", self.models)
            self.save_state(round_number)
            self.info(f"round {round_number + 1}/{self.num_rounds} finished with {answered} clients")
            self.server_evaluate(round_number + 1)
            if self.settings.memory_gc_rounds and (round_number + 1) % self.settings.memory_gc_rounds == 0:
                cleanup_memory()
        if self.settings.final_validation:
            results = self.scatter_and_gather(self.settings.validate_task, self.select_clients(self.num_rounds), self.num_rounds)
            if results is not None:
                self.track_best(results, self.num_rounds)
        self.info("best validation scores: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(self.best_scores.items())))
        if self.settings.cross_site_evaluation:
            self.evaluate_cross_site()

    def scatter_and_gather(self, task: str, clients: List[str], round_number: int) -> Optional[Dict[str, FLModel]]:
        """Send every client its own payload in parallel and wait for all results.

        Returns ``{client: FLModel}`` ordered by client name, not by arrival, so that aggregation sums the updates
        in one order in every run (floating-point addition is not associative); or ``None`` when the run was
        aborted or too few clients answered (the workflow then stops with a message naming the missing clients).
        A client whose job NVFlare has deemed dead (no heartbeat for the dead-client grace period,
        ``NVFLARE_DEAD_CLIENT_GRACE_PERIOD``), or that this workflow deemed dead earlier in the run (silent for
        ``client_timeout`` seconds), gets no task and counts as missing; one that dies during the round fails its
        task once NVFlare deems it dead or once it has been silent for ``client_timeout`` seconds, whichever comes
        first. A result that is not what :meth:`expected_result` declares is rejected (logged with the client and
        the reason) and counts as missing.
        """
        self._results, self._rejected, self._expected, self._round = {}, {}, {}, round_number
        targets = self.reachable(task, clients, round_number)
        payloads = []
        for client in targets:
            payload, self._expected[client] = self.task_for(task, client, round_number)
            payload.meta = {**(payload.meta or {}), **self.run_meta(client)}
            if task == self.settings.train_task:
                self.train_rounds[client] = round_number
            self.send_model(task_name=task, data=payload, targets=[client], timeout=self.settings.task_timeout,
                            callback=self._collect)
            payloads.append(payload)
        finished = self.wait_for_results(task, targets, lambda: self._results.keys() | self._rejected.keys(),
                                         round_number)
        # NVFlare keeps a finished task's data; emptied here (each payload's own dict), the models sent this round
        # are freed as soon as aggregation replaces them, not held beside the new ones
        for payload in payloads:
            payload.params.clear()
        if not finished:
            self.info(f"abort signal received: stopping; {self._missing_clients(clients)}")
            return None
        needed = self.settings.min_clients or len(clients)
        if len(self._results) < needed:
            self.panic(f"round {round_number}: task '{task}' got {len(self._results)} results, needs {needed}; "
                       f"{self._missing_clients(clients)}")
            return None
        if len(self._results) < len(clients):
            self.warning(f"round {round_number}: continuing with {len(self._results)} of {len(clients)} clients "
                         f"(min_clients={self.settings.min_clients}); {self._missing_clients(clients)}")
        return {client: self._results[client] for client in sorted(self._results)}

    def send_model(self, task_name: str = "train", data: Optional[FLModel] = None, targets: Optional[List[str]] = None,
                   min_responses: Optional[int] = None, timeout: int = 0,
                   callback: Optional[Callable[[FLModel], bool]] = None) -> None:
        """NVFlare's ``send_model``; to one client, as a single-target *send* task rather than a broadcast.

        NVFlare deep-copies the data of every broadcast task and keeps the copy until the task ends, in case the
        workflow changes the data in place meanwhile. Every client has its own task here, so that would hold one more
        copy of each client's payload for the whole round (FedSM: the 129 M-parameter selector and its two Adam
        moments, 1.5 GB a client). These workflows never change a payload in place (aggregation builds new arrays),
        so a payload for one client is sent as it is.
        """
        if not targets or len(targets) != 1 or callback is None:
            super().send_model(task_name=task_name, data=data, targets=targets, min_responses=min_responses,
                               timeout=timeout, callback=callback)
            return
        # what ModelController.broadcast_model prepares for one target, without its broadcast
        self._current_min_responses, self._current_num_targets, self._current_failed_clients = 1, 1, set()
        self.set_fl_context(data)
        self.info(f"Sending task {task_name} to {targets}")
        task = self._prepare_task(data=data, task_name=task_name, timeout=timeout, callback=callback)
        self.send(task=task, targets=targets, fl_ctx=self.fl_ctx)

    def task_for(self, task: str, client: str, round_number: int) -> Tuple[FLModel, ResultSpec]:
        """What ``client`` is sent for ``task`` and what it must send back: :meth:`payload_for` with
        :meth:`payload_meta` and :meth:`expected_result`, or, for the cross-site task, the final models."""
        if task == self.settings.cross_site_task:
            meta = {CROSS_SITE_SPLIT: self.settings.cross_site_split, **self.cross_site_meta()}
            payload = FLModel(params=bundle(self._cross_site_models), current_round=round_number,
                              total_rounds=self.num_rounds, meta=meta)
            return payload, self.cross_site_result(sorted(self._cross_site_models))
        payload = FLModel(params=dict(self.payload_for(client)), current_round=round_number,
                          total_rounds=self.num_rounds, meta=self.payload_meta(client))
        return payload, self.expected_result(client, task, payload)

    def run_meta(self, client: str) -> dict:
        """What every task tells ``client`` about the run: its id and, in a resumed run, the last round the client
        trained in before (-1: none), whose saved state it restores (:mod:`medfl.common.client_state`)."""
        if self.resume_rounds is None:
            return {RUN_ID: self.run_id}
        return {RUN_ID: self.run_id, RESUME_ROUND: self.resume_rounds.get(client, -1)}

    def reachable(self, task: str, clients: List[str], round_number: int) -> List[str]:
        """``clients`` without those NVFlare deems disconnected and those deemed dead earlier in this run (each
        group logged)."""
        self._silent = []
        disconnected = [c for c in clients if self.get_client_disconnect_time(c)]
        if disconnected:
            self.warning(f"round {round_number}: not sending task '{task}' to disconnected clients {disconnected}")
        dead = [c for c in clients if c in self.dead_clients and c not in disconnected]
        if dead:
            self.warning(f"round {round_number}: not sending task '{task}' to clients deemed dead earlier in this "
                         f"run {dead}")
        return [c for c in clients if c not in disconnected and c not in dead]

    def wait_for_results(self, task: str, targets: List[str], answered: Callable[[], Collection[str]],
                         round_number: int) -> bool:
        """Wait until every target has answered (``answered()``: the clients that did), NVFlare has ended the other
        tasks (timeout, error reply, dead job), or the clients left have shown no sign of life for
        ``client_timeout`` seconds since their task was sent: those are deemed dead (logged, added to
        :attr:`dead_clients`) and their tasks cancelled. ``False`` when the run was aborted meanwhile."""
        sent_at = self.liveness.clock()
        # A result wakes the wait at once: a finished task leaves NVFlare's standing list only at its next task
        # check, so polling that alone would add up to two task_check_periods to every round.
        while True:
            done = set(answered())
            pending = [c for c in targets if c not in done and c not in self._silent]
            if not pending or not self.get_num_standing_tasks():
                break
            if self.abort_signal.triggered:
                return False
            silent = self.liveness.silent(pending, since=sent_at)
            if silent:
                self._silent += silent
                self.dead_clients.update(silent)
                self.warning(f"round {round_number}: no sign of life from {silent} for {self.liveness.timeout:g} s "
                             f"(client_timeout) while holding task '{task}': deeming them dead")
                continue
            self._result_arrived.wait(self._task_check_period)
            self._result_arrived.clear()
        if self._silent and self.get_num_standing_tasks():
            self.cancel_all_tasks()
        return True

    def _missing_clients(self, clients: List[str]) -> str:
        """Which of ``clients`` sent no result, which of those NVFlare deems disconnected (dead job) or this workflow
        deemed dead (silent for ``client_timeout`` seconds), and which results were rejected, with the reasons."""
        missing = sorted(set(clients) - set(self._results) - set(self._rejected))
        disconnected = [c for c in missing if self.get_client_disconnect_time(c)]
        silent = [c for c in missing if c in self.dead_clients]
        dead = f"; no sign of life for {self.liveness.timeout:g} s: {silent}" if silent else ""
        parts = [f"no result from {missing} (disconnected: {disconnected}{dead})"] if missing or not self._rejected \
            else []
        parts += [f"rejected the result of {client}: {reason}" for client, reason in sorted(self._rejected.items())]
        return "; ".join(parts)

    def _collect(self, result: FLModel) -> bool:
        """NVFlare's callback for each result: keep it if it is what :meth:`expected_result` declared, else reject
        it (logged; ``False`` tells NVFlare that it was not accepted). Arrays the client's
        :class:`~medfl.common.pieces.SplitLargeArrays` sent in pieces are put back together first
        (:func:`joined_problem`): a malformed piece rejects the result."""
        client = result.meta["client_name"]
        expected = self._expected.get(client)
        problem = "no task was sent to it in this round" if expected is None else \
            joined_problem(result) or check_result(expected, result)
        if problem:
            self._rejected[client] = problem
            self.error(f"round {self._round}: rejected the result of {client}: {problem}")
        else:
            self._results[client] = result
        self._result_arrived.set()
        return problem is None

    # ------------------------------------------------------------------ cross-site evaluation
    def cross_site_models(self) -> Dict[str, Params]:
        """The final models every site scores, by row name, each as the payload its clients load for training
        (default: ``global`` as FedAvg sends it). A method with more models (FedSM's personalised models and super
        model) adds them; one whose models live on the clients (PRR-FL) asks for them here."""
        return {"global": bundle({"global": self.models["global"]})} if "global" in self.models else {}

    def cross_site_meta(self) -> dict:
        """Extra information sent with the final models (e.g. FedSM's selection threshold)."""
        return {}

    def cross_site_result(self, models: List[str]) -> ResultSpec:
        """A site's reply to the cross-site task: no arrays, the number of samples it scored, its metric's name, and
        exactly one score ``<model>_<metric>`` per model, in the metric's range (:mod:`medfl.common.validation`)."""

        def known_metric(name) -> Optional[str]:
            return None if name in METRIC_RANGES else f"is {name!r}, not one of {sorted(METRIC_RANGES)}"

        def one_score_per_model(result: FLModel) -> Optional[str]:
            metric = result.meta[CROSS_SITE_METRIC]
            expected, sent = {f"{m}_{metric}" for m in models}, set(result.metrics or {})
            if sent != expected:
                return f"scores {sorted(sent)} sent, but {sorted(expected)} expected"
            return None

        sample_count = partial(check_sample_count, maximum=self.settings.max_client_samples)
        return ResultSpec(meta={NUM_EVAL_SAMPLES: sample_count, CROSS_SITE_METRIC: known_metric},
                          checks=[one_score_per_model])

    def evaluate_cross_site(self) -> None:
        """Send every site all of :meth:`cross_site_models` on the cross-site task and write the matrix of their
        scores (``cross_site.*``, :func:`~medfl.common.cross_site.write_cross_site`) into the app folder."""
        self._cross_site_models = self.cross_site_models()
        if not self._cross_site_models:
            self.warning("cross-site evaluation: this workflow has no final model to evaluate")
            return
        clients = sorted(c.name for c in self.engine.get_clients())
        results = self.scatter_and_gather(self.settings.cross_site_task, clients, self.num_rounds)
        if results is None:
            return
        metrics = {result.meta[CROSS_SITE_METRIC] for result in results.values()}
        if len(metrics) != 1:
            self.panic(f"cross-site evaluation: the sites scored with different metrics {sorted(metrics)}")
            return
        metric = metrics.pop()
        matrix = {model: {client: float(result.metrics[f"{model}_{metric}"]) for client, result in results.items()}
                  for model in self._cross_site_models}
        paths = write_cross_site(matrix, metric, self.get_app_dir())
        self.info(f"cross-site {metric} of {len(matrix)} models on {len(results)} sites written to "
                  + ", ".join(str(p) for p in paths))

    # ------------------------------------------------------------------ best models, checkpoints, metrics
    def track_best(self, results: Dict[str, FLModel], round_number: int) -> None:
        """Score each model by its clients' validation metrics weighted by :meth:`best_weights`; from round
        :meth:`first_best_round` on, save a new best. A client of weight 0 adds nothing (its metric may be NaN); a model
        whose clients weigh 0 in all is not scored this round."""
        weights = self.best_weights(results, round_number)
        totals: Dict[str, List[float]] = {}
        for client, result in sorted(results.items()):
            for key, value in (result.metrics or {}).items():
                self._add_scalar(f"val/{client}/{key}", value, round_number)
                acc = totals.setdefault(self.model_for_metric(client, key), [0.0, 0.0])
                if weights[client]:
                    acc[0] += weights[client] * float(value)
                    acc[1] += weights[client]
        for name, (weighted, total) in sorted(totals.items()):
            if not total:
                self.warning(f"round {round_number}: {name} not scored: its clients' best-model weights "
                             f"({self.settings.best_weighting}) sum to 0")
                continue
            score = weighted / total
            self._add_scalar(f"val_mean/{name}", score, round_number)
            eligible = round_number >= self.first_best_round() and name in self.models
            if eligible and score > self.best_scores.get(name, -np.inf):
                self.best_scores[name] = score
                self.save_models("best", {name: self.models[name]}, round_number=round_number, score=score)
                self.info(f"new best {name}: {score:.4f} (models sent in round {round_number})")

    def first_best_round(self) -> int:
        """The first round whose sent models may become best: the later of ``best_from_round`` and the window of
        ``best_selection_start`` (the aggregate of round ``ceil(start * num_rounds)`` is sent in the next round),
        never after the last validated round."""
        first = self.settings.best_from_round
        start = self.settings.best_selection_start
        if start > 0:
            last = self.num_rounds if self.settings.final_validation else self.num_rounds - 1
            first = max(first, min(math.ceil(start * self.num_rounds) + 1, last))
        return first

    def best_weights(self, results: Dict[str, FLModel], round_number: int) -> Dict[str, float]:
        """Each client's weight in the best-model score, by ``best_weighting``: its validation samples
        (``NUM_VAL_SAMPLES``, 1 if absent), 1 (HarmoFL's ``mean(val_acc)`` over sites), or its local steps of the
        round as FedSM's original weighs them (``IntimeModelSelector(weigh_by_local_iter=True)``:
        ``NUM_STEPS_CURRENT_ROUND``). A result without a step count (the final validation) takes its client's count
        from its last training result of this run; if a client has none, all of these results weigh equally (one
        warning)."""
        weighting = self.settings.best_weighting
        if weighting == "validation_samples":
            return {client: float((r.meta or {}).get(NUM_VAL_SAMPLES, 1)) for client, r in results.items()}
        if weighting == "steps":
            self.train_steps.update({client: float(r.meta[NUM_TRAIN_STEPS]) for client, r in results.items()
                                     if NUM_TRAIN_STEPS in (r.meta or {})})
            unknown = sorted(set(results) - set(self.train_steps))
            if not unknown:
                return {client: self.train_steps[client] for client in results}
            self.warning(f"round {round_number}: no local step count from {unknown} in this run: best-model scores "
                         "of these results weigh the clients equally")
        return {client: 1.0 for client in results}

    def save_models(self, kind: str, models: Dict[str, Params], **info) -> None:
        app_dir = self.get_app_dir()
        for name, params in models.items():
            state = {"state_dict": {k: torch.as_tensor(v) for k, v in params.items()}, **info}
            atomic_torch_save(state, os.path.join(app_dir, checkpoint_name(kind, name)))

    def save_state(self, round_number: int) -> None:
        """Persist everything needed to continue after ``round_number`` (see ``resume_from``)."""
        state = {"completed_round": round_number, "num_rounds": self.num_rounds, "models": self.models,
                 "best_scores": self.best_scores, "extra": self.extra_state(), "run_id": self.run_id,
                 "train_rounds": self.train_rounds}
        atomic_torch_save(_as_torch(state), os.path.join(self.get_app_dir(), STATE_FILE))

    def _resume(self, path: str) -> bool:
        """Continue from a state file written by :meth:`save_state`; ``False`` (after :meth:`panic` naming the file
        and the problem) when it is missing, unreadable or not a state of this job."""
        try:
            state = read_server_state(path, self.num_rounds, self.models)
            self.load_extra_state(state["extra"])
        except DataError as e:
            self.panic(f"resume_from: {e}")
            return False
        except (KeyError, TypeError, ValueError) as e:
            self.panic(f"resume_from: [server] {path}: the method's extra state does not fit this job "
                       f"({type(e).__name__}: {e}); was it written by another method?")
            return False
        self.models, self.best_scores = state["models"], state["best_scores"]
        self.start_round = state["completed_round"] + 1
        if "run_id" in state:
            self.run_id, self.train_rounds = state["run_id"], dict(state["train_rounds"])
            self.resume_rounds = dict(self.train_rounds)
        else:
            self.warning(f"{path} was written by a medfl without exact resume: the clients start their optimizers and "
                         "random states afresh, so this run will not be bit-identical to an uninterrupted one")
        self.info(f"resumed from {path}: continuing at round {self.start_round + 1}/{self.num_rounds}")
        return True

    def _open_writer(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(os.path.join(self.get_run_dir(), "tb_events", "server"))

    def _add_scalar(self, tag: str, value: float, step: int) -> None:
        if self._writer is not None:
            self._writer.add_scalar(tag, float(value), step)
            self._writer.flush()


WEIGHTINGS = {"samples": NUM_TRAIN_SAMPLES, "steps": NUM_TRAIN_STEPS}


def joined_problem(result: FLModel) -> Optional[str]:
    """Put back together, in ``result.params``, the arrays its sender cut into pieces for the transfer (the manifest
    in its meta, :mod:`medfl.common.pieces`); ``None``, or what is wrong with the pieces (naming the key)."""
    meta = result.meta or {}
    if PIECES_META not in meta:
        return None
    if not isinstance(result.params, dict):
        return f"the reply lists arrays sent in pieces but holds {type(result.params).__name__} parameters"
    try:
        join_arrays(result.params, meta.pop(PIECES_META))
    except PieceError as e:
        return str(e)
    return None


def client_weights(results: Dict[str, FLModel], weighting: str = "samples") -> List[float]:
    """Aggregation weights in ``results`` order: ``"samples"`` (training-set size, FedAvg), ``"steps"`` (local
    optimizer steps, NVFlare's ``NUM_STEPS_CURRENT_ROUND``) or ``"equal"``."""
    if weighting == "equal":
        return [1.0] * len(results)
    if weighting in WEIGHTINGS:
        return [float(required_meta(results, client, WEIGHTINGS[weighting])) for client in results]
    raise ValueError(f"weighting must be one of {sorted(WEIGHTINGS) + ['equal']}, got {weighting!r}")


def required_meta(results: Dict[str, FLModel], client: str, key: str):
    """``results[client].meta[key]``, or a :class:`DataError` naming the client and the missing entry."""
    meta = results[client].meta or {}
    if key not in meta:
        raise DataError(f"the client's reply has no '{key}' in its meta (is it running this job's client?)",
                        site=client)
    return meta[key]
