"""Base client executor: receive models, validate them, train locally, send the update and the metrics.

Every method's client derives from :class:`RoundExecutor` and fills in five hooks (``setup``,
``load_payload``, ``evaluate``, ``train_round``, ``export_params``); the NVFlare plumbing (task names,
FLModel conversion, TensorBoard streaming, clear errors, abort) lives here once.

Per round the server sends a *payload* (a flat dict of numpy arrays, see :mod:`medfl.common.params`).
The client first validates what it received on its validation split (so each metric belongs to the model
the server holds) and then trains. Metrics are ``{model_name: value}``; the server's controller tracks the
best version of each model with them.
"""

from __future__ import annotations

import math
import os
from abc import abstractmethod
from pathlib import Path
from typing import Any, Dict, List, Optional, Type

import numpy as np
import torch
from torch.utils.data import Dataset

from nvflare.apis.event_type import EventType
from nvflare.apis.executor import Executor
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.utils.fl_model_utils import FLModelUtils
from nvflare.fuel.utils.memory_utils import cleanup_memory

from .client_state import read_client_state, round_file, state_folder, write_client_state
from .config import load_train_config
from .errors import DataError
from .io import MAX_REASON_CHARS
from .job_version import loaded_medfl, version_problem
from .liveness import Heartbeat
from .memory_guard import GarbageGuard
from .params import Params, unbundle
from .protocol import (
    CROSS_SITE_METRIC,
    CROSS_SITE_SPLIT,
    NUM_EVAL_SAMPLES,
    NUM_TRAIN_SAMPLES,
    NUM_TRAIN_STEPS,
    NUM_VAL_SAMPLES,
    RESUME_ROUND,
    RUN_ID,
)
from .random_state import capture_random_state, restore_random_state, seed_random_transforms
from .runtime import MALLOC_ARENAS, freeze_setup_objects, limit_malloc_arenas, seed_everything, select_device
from .settings import ClientSettings
from .train import Batch, TrainingAborted, optimizer_step
from .validation import non_finite_problem, update_norm

DEFAULT_STATE_DIR = "medfl_state"  # the client state's folder in the site's workspace unless state_dir names one


def check_update(params: Params) -> None:
    """Raise ``FloatingPointError`` if the update's norm is not finite (NaN or inf weights): such an update is never
    sent; the task fails with the site, the round and the first key at fault."""
    norm = update_norm(params)
    if not math.isfinite(norm):
        problem = next(filter(None, (non_finite_problem(k, np.asarray(v)) for k, v in sorted(params.items()))), "")
        raise FloatingPointError(f"the update's norm is {norm} ({problem}); not sending it (check the learning "
                                 "rate and the input data)")


class RoundExecutor(Executor):
    """Template for a client in a round-based workflow (tasks ``train`` and ``validate``).

    Its settings, read from ``config_train.json`` at the start of the run, are :attr:`Settings` (a method's client
    declares its subclass of :class:`~medfl.common.settings.ClientSettings`); an unknown key, a wrong type or a
    value out of range stops the client before round 0 with the file, the key and the closest known key.

    Args:
        config_train_filename: the job's per-site training configuration, in the app's config folder.
        analytic_sender_id: id of an NVFlare ``TBWriter`` component; metrics are streamed to the server's
            TensorBoard through it. Empty to disable.
        train_task / validate_task / cross_site_task: task names sent by the server's controller.
        memory_gc: after each task, after loading the received models and after sending a result, collect garbage
            and release freed memory to the OS (:meth:`release_memory`); during the run, collect garbage whenever
            the resident memory grows (:class:`~medfl.common.memory_guard.GarbageGuard`: transfers); from its
            construction on, the process makes at most :data:`~medfl.common.runtime.MALLOC_ARENAS` malloc arenas
            (:func:`~medfl.common.runtime.limit_malloc_arenas`).
    """

    Settings: Type[ClientSettings] = ClientSettings

    def __init__(
        self,
        config_train_filename: str = "config_train.json",
        analytic_sender_id: str = "analytic_sender",
        train_task: str = "train",
        validate_task: str = "validate",
        cross_site_task: str = "cross_evaluate",
        memory_gc: bool = True,
    ):
        super().__init__()
        self.memory_gc = memory_gc
        if memory_gc:  # as early as the client's code runs: arenas made before stay
            limit_malloc_arenas(MALLOC_ARENAS)
        self.config_train_filename = config_train_filename
        self.analytic_sender_id = analytic_sender_id
        self.train_task = train_task
        self.validate_task = validate_task
        self.cross_site_task = cross_site_task
        self.site: str = ""
        self.settings: Optional[ClientSettings] = None
        self.device = torch.device("cpu")
        self.app_dir = ""
        self.writer = None
        self.current_round = 0
        self.task_meta: Dict[str, Any] = {}
        self.datasets: Dict[str, Dataset] = {}
        self._setup_error: Optional[str] = None
        self._heartbeat: Optional[Heartbeat] = None
        self.garbage_guard = GarbageGuard()
        self.state_dir = Path(DEFAULT_STATE_DIR)
        self.run_id = ""
        self._restored = False
        self._unsaved_round: Optional[int] = None

    # ------------------------------------------------------------------ hooks for each method
    @abstractmethod
    def setup(self, fl_ctx: FLContext) -> None:
        """Build data loaders, models and optimizers from ``self.settings``. Raise :class:`DataError` on bad input."""

    @abstractmethod
    def load_payload(self, params: Params, fl_ctx: FLContext) -> None:
        """Load the models the server sent this round."""

    @abstractmethod
    def evaluate(self, split: str) -> Dict[str, float]:
        """Evaluate the loaded models on ``split``; return ``{model_name: metric}``."""

    @abstractmethod
    def train_round(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        """Local training for one round."""

    @abstractmethod
    def export_params(self, fl_ctx: FLContext) -> Params:
        """The update to send back (same keys as the payload unless the method says otherwise)."""

    @abstractmethod
    def num_samples(self, split: str) -> int:
        """Number of samples of a split (weights for the server's averages)."""

    def build_split(self, split: str) -> Dataset:
        """The dataset of a split that setup did not build (the cross-site evaluation's ``testing``)."""
        raise DataError(f"this client has no '{split}' split (set the server's cross_site_split to one it has)",
                        site=self.site)

    def dataset(self, split: str) -> Dataset:
        """``self.datasets[split]``, built with :meth:`build_split` on first use."""
        if split not in self.datasets:
            self.datasets[split] = self.build_split(split)
        return self.datasets[split]

    def score_name(self) -> str:
        """The name of the score :meth:`evaluate` reports as ``global`` (``dice``, ``macro_f1`` ...; a name of
        :data:`~medfl.common.validation.METRIC_RANGES`)."""
        raise DataError(f"{type(self).__name__} does not name its score, so it cannot take part in the cross-site "
                        "evaluation", site=self.site)

    def cross_evaluate(self, models: Dict[str, Params], split: str, fl_ctx: FLContext) -> Dict[str, float]:
        """``{model: score}`` of each final model on this site's ``split``. ``models`` are payloads as the train task
        sends them (default: each is loaded with :meth:`load_payload` and scored as ``global`` by :meth:`evaluate`);
        a method whose final models differ from its payload overrides this."""
        self.dataset(split)
        scores = {}
        for name, payload in sorted(models.items()):
            self.load_payload(payload, fl_ctx)
            scores[name] = float(self.evaluate(split)["global"])
        return scores

    def task_names(self) -> List[str]:
        """The tasks this executor runs (its ``tasks`` in ``config_fed_client.json``)."""
        return [self.train_task, self.validate_task, self.cross_site_task]

    def num_train_steps(self) -> int:
        """Local optimizer steps of one model in a round: ``len(train_loader)`` per local epoch."""
        return len(self.train_loader) * self.settings.local_epochs

    def result_meta(self, task_name: str) -> Dict[str, Any]:
        """Extra entries for the meta of the reply to ``task_name`` (e.g. FedMAS's robust factor, PRR-FL's
        metrics after local training). Default: none."""
        return {}

    def train_step(self, model: torch.nn.Module, batch: Batch, loss_fn, optimizer) -> torch.Tensor:
        """One optimisation step of :func:`~medfl.common.train.train_epoch` (default: forward, backward,
        ``optimizer.step()``); a method that changes the step (HarmoFL's weight perturbation) overrides it."""
        return optimizer_step(model, batch, loss_fn, optimizer)

    def persistent_state(self) -> Dict[str, Any]:
        """What this client carries from one round into the next (saved after each training round, for an exact
        resume): here its random state; a method that keeps more (optimizers, local models) extends the dict."""
        return {"random": capture_random_state(self.datasets, self.device)}

    def load_persistent_state(self, state: Dict[str, Any]) -> None:
        """Restore what :meth:`persistent_state` returned (a method that extends one extends the other)."""
        restore_random_state(state["random"], self.datasets, self.device)

    # ------------------------------------------------------------------ NVFlare plumbing
    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN:
            self._heartbeat = Heartbeat(fl_ctx.get_engine())
            self._heartbeat.start()
            self._initialize(fl_ctx)
            if self.memory_gc:
                self.garbage_guard.start()
        elif event_type == EventType.AFTER_SEND_TASK_RESULT:
            if self._unsaved_round is not None:
                self._save_state(fl_ctx)
            self.release_memory()  # the sent result's transfer buffers, which NVFlare leaves in reference cycles
        elif event_type == EventType.END_RUN:
            self.garbage_guard.stop()
            if self._heartbeat is not None:
                self._heartbeat.stop()

    def _initialize(self, fl_ctx: FLContext) -> None:
        self.site = fl_ctx.get_identity_name()
        problem = version_problem(fl_ctx.get_prop(FLContextKey.JOB_META))
        if problem:
            self._setup_error = f"[{self.site}] {problem}"
            self.log_error(fl_ctx, f"cannot start: {self._setup_error}")
            return
        engine = fl_ctx.get_engine()
        job_id = fl_ctx.get_job_id()
        workspace = engine.get_workspace()
        self.app_dir = workspace.get_app_dir(job_id)
        self.state_dir = Path(workspace.get_root_dir()) / DEFAULT_STATE_DIR
        config_path = os.path.join(workspace.get_app_config_dir(job_id), self.config_train_filename)
        try:
            self.settings = self.Settings.load(load_train_config(config_path, site=self.site), config_path, self.site)
            if self.settings.state_dir:
                self.state_dir = self.settings.path("state_dir", self.site)
            seed_everything(self.settings.seed)
            if self.settings.num_threads > 0:
                torch.set_num_threads(self.settings.num_threads)
            self.device = select_device(self.settings.device)
            if self.analytic_sender_id:
                self.writer = engine.get_component(self.analytic_sender_id)
            self.setup(fl_ctx)
            seed_random_transforms(getattr(self, "datasets", {}), self.settings.seed)
            freeze_setup_objects()
        except (DataError, ValueError, KeyError) as e:
            self._setup_error = str(e) if isinstance(e, DataError) else f"[{self.site}] {config_path}: {e}"
            self.log_error(fl_ctx, f"cannot start: {self._setup_error}")
            return
        self.log_info(fl_ctx, f"ready on {self.device} with {loaded_medfl()}: {self.num_samples('training')} "
                              f"training and {self.num_samples('validation')} validation samples")

    def log_metrics(self, metrics: Dict[str, float], prefix: str, step: int) -> None:
        """Stream ``{name: value}`` to TensorBoard as ``<prefix>/<name>``."""
        if self.writer is not None:
            for name, value in metrics.items():
                self.writer.add_scalar(f"{prefix}/{name}", float(value), global_step=step)

    def cross_site_reply(self, received: FLModel, fl_ctx: FLContext) -> FLModel:
        """The reply to the cross-site task: ``<model>_<metric>`` scores and how many samples gave them."""
        split = (received.meta or {}).get(CROSS_SITE_SPLIT, "testing")
        if split not in ("testing", "validation"):
            raise DataError(f"the server asked for the cross-site scores on the split {split!r}", site=self.site)
        metric = self.score_name()
        scores = self.cross_evaluate(unbundle(received.params or {}), split, fl_ctx)
        self.log_info(fl_ctx, f"cross-site {metric} on the {split} split: "
                              + ", ".join(f"{k}={v:.4f}" for k, v in scores.items()))
        return FLModel(metrics={f"{model}_{metric}": score for model, score in scores.items()},
                       meta={NUM_EVAL_SAMPLES: len(self.dataset(split)), CROSS_SITE_METRIC: metric})

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        if task_name not in self.task_names():
            self.log_error(fl_ctx, f"unknown task {task_name!r}")
            return make_reply(ReturnCode.TASK_UNKNOWN)
        if self._setup_error:
            self.log_error(fl_ctx, f"cannot run task {task_name}: {self._setup_error}")
            return make_reply(ReturnCode.EXECUTION_EXCEPTION)
        try:
            received = FLModelUtils.from_shareable(shareable)
            self.current_round = received.current_round or 0
            self.task_meta = received.meta or {}
            self.follow_run(fl_ctx)
            if task_name == self.cross_site_task:
                return FLModelUtils.to_shareable(self.cross_site_reply(received, fl_ctx))
            self.load_payload(received.params, fl_ctx)
            self.release_memory()  # what the task's download left in reference cycles, before training
            metrics = self.evaluate("validation")
            self.log_metrics(metrics, "val", self.current_round)
            self.log_info(fl_ctx, f"round {self.current_round} validation of received models: "
                                  + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
            meta = {NUM_VAL_SAMPLES: self.num_samples("validation")}
            if task_name == self.validate_task:
                return FLModelUtils.to_shareable(FLModel(metrics=metrics, meta={**meta, **self.result_meta(task_name)}))
            self.train_round(abort_signal, fl_ctx)
            meta[NUM_TRAIN_SAMPLES] = self.num_samples("training")
            meta[NUM_TRAIN_STEPS] = self.num_train_steps()
            meta.update(self.result_meta(task_name))
            params = self.export_params(fl_ctx)
            check_update(params)
            result = FLModel(params=params, metrics=metrics, meta=meta, current_round=self.current_round)
            self._unsaved_round = self.current_round if self.run_id else None  # saved once the result is sent
            return FLModelUtils.to_shareable(result)
        except TrainingAborted:
            self.log_info(fl_ctx, "task aborted")
            return make_reply(ReturnCode.TASK_ABORTED)
        except (DataError, FloatingPointError) as e:
            self.log_error(fl_ctx, f"[{self.site}] round {self.current_round}: {e}")
            return make_reply(ReturnCode.EXECUTION_EXCEPTION)
        finally:
            self.release_memory()

    def release_memory(self) -> None:
        """NVFlare's ``cleanup_memory`` (``gc.collect``, then ``malloc_trim``) if ``memory_gc``: after each task,
        once the received models are loaded and once a result is sent. NVFlare's transfers leave their buffers in
        reference cycles (a sent array's serialised bytes, a received one's download buffer) that only a collection
        frees: FedSM's 0.4 GB selector layer and its moments would otherwise stay until the next one."""
        if self.memory_gc:
            cleanup_memory()

    # ------------------------------------------------------------------ exact resume (medfl.common.client_state)
    def follow_run(self, fl_ctx: FLContext) -> None:
        """Take the run id from the task's meta; before the first task of a resumed run, restore the state saved
        after the last round this client trained in (the server names it). ``DataError`` if that state is missing or
        does not fit this client: then every task fails, as the resume would not be exact."""
        if RUN_ID not in self.task_meta:
            return
        self.run_id = self.task_meta[RUN_ID]
        folder = state_folder(self.state_dir, self.run_id, self.site)
        last_round = self.task_meta.get(RESUME_ROUND)
        if last_round is None or self._restored:
            return
        if isinstance(last_round, bool) or not isinstance(last_round, int) or not -1 <= last_round < self.current_round:
            raise DataError(f"the server sent {RESUME_ROUND}={last_round!r}, not a round before {self.current_round}",
                            site=self.site)
        if last_round >= 0:
            state = read_client_state(folder, self.run_id, self.site, last_round)
            try:
                self.load_persistent_state(state)
            except (KeyError, TypeError, ValueError, RuntimeError) as e:
                raise DataError(f"cannot resume exactly: the saved state does not fit this client "
                                f"({type(e).__name__}: {str(e)[:MAX_REASON_CHARS]})",
                                path=round_file(folder, last_round), site=self.site) from None
            self.log_info(fl_ctx, f"resumed run {self.run_id}: restored the state saved after round {last_round}")
        self._restored = True

    def _save_state(self, fl_ctx: FLContext) -> None:
        """Write the state this client carries into its next round (after the result is sent, so it is exactly what
        the next round starts from: FedSM releases the sent selector moments then)."""
        round_number, self._unsaved_round = self._unsaved_round, None
        try:
            path = write_client_state(state_folder(self.state_dir, self.run_id, self.site), self.run_id, self.site,
                                      round_number, self.persistent_state())
        except (OSError, RuntimeError) as e:
            self.log_error(fl_ctx, f"[{self.site}] round {round_number}: cannot save the client state to "
                                   f"{self.state_dir} ({type(e).__name__}: {e}); a resume after this round will "
                                   "fail on this site")
            return
        self.log_debug(fl_ctx, f"saved the client state of round {round_number} to {path}")
