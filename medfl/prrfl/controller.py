"""PRR-FL server: Progressive Fourier Aggregation of the deputies, one deputy per client, and the selection of
the personalised models (which stay on the clients)."""

from __future__ import annotations

import math
from typing import Dict, List, Literal, Optional, Tuple

import numpy as np
import torch
from pydantic import Field, model_validator

from nvflare.app_common.abstract.fl_model import FLModel

from medfl.common.controller import RoundController, ServerSettings, client_weights
from medfl.common.networks import build_network
from medfl.common.params import Params, bundle, to_numpy, unbundle, weighted_mean
from medfl.common.runtime import seed_everything
from medfl.common.settings import NetworkSpec
from medfl.common.validation import ArraySpec, ResultSpec, array_specs, check_metrics
from medfl.federations.dermoscopy import networks  # noqa: F401  (registers vgg16_slim)

from .pfa import pfa_aggregate_state_dicts, pfa_ratio, shared_params
from .protocol import BEST_PERSONAL_ROUND, BEST_PERSONAL_SCORE, DEPUTY, PERSONAL, SUBMIT_PERSONAL_TASK, TRAINED_METRICS


def deputy_name(client: str) -> str:
    return f"{DEPUTY}_{client}"


class PFASettings(ServerSettings):
    """PRR-FL server settings (its workflow ``args`` in ``config_fed_server.json``)."""

    network: NetworkSpec = Field(description="the deputy network (the clients' personalised models too)")
    aggregation: Literal["pfa", "mean"] = Field("pfa", description=(
        "pfa: Progressive Fourier Aggregation, one deputy per client (the original); mean: the ablation 'PRR-FL "
        "without PFA', the weighted mean of the deputies' shared (non-BatchNorm) parameters, the same for every "
        "client (FedBN style); the pfa_ratio_* settings are then unused"))
    pfa_ratio_start: float = Field(0.7, ge=0, le=1, description="PFA's low-frequency box ratio L at round 0")
    pfa_ratio_end: float = Field(0.95, ge=0, le=1, description="the ratio L grows linearly towards this value")
    weighting: Literal["equal", "samples"] = Field("equal", description=(
        "weights of the amplitude mean (or of the parameter mean): equal (the original) or training-set sizes"))
    selection_start: float = Field(0.8, ge=0, le=1, description=(
        "share of the rounds before the personalised-model selection window opens (0.8: the last 20 %)"))
    selection_metric: str = Field("personal_macro_f1", description="the clients' trained metric to select on")
    submit_task: str = Field(SUBMIT_PERSONAL_TASK, description=(
        "task name on which the clients send their personalised models for the cross-site evaluation"))

    @model_validator(mode="after")
    def _ordered_ratios_and_final_validation(self) -> "PFASettings":
        if self.pfa_ratio_start > self.pfa_ratio_end:
            raise ValueError(f"pfa_ratio_start {self.pfa_ratio_start} exceeds pfa_ratio_end {self.pfa_ratio_end}")
        if not self.final_validation:
            raise ValueError("PFAController needs final_validation=true: it carries the last round's selection")
        return self


class PFAController(RoundController):
    """PRR-FL (Chen et al., MICCAI 2021) server: every client receives its own deputy after PFA (Sec. 2.2).

    Round 0 sends every client the same initial deputy. After round ``r`` the deputies are aggregated with
    :func:`~medfl.prrfl.pfa.pfa_aggregate_state_dicts` at ``L = pfa_ratio(r, num_rounds, pfa_ratio_start,
    pfa_ratio_end)``: per conv / linear weight the clients' mean amplitude replaces each client's own inside the
    centred low-frequency box, phases and high frequencies stay the client's. BatchNorm parameters and statistics
    never travel: the clients send and receive the deputy without them and keep their own (FedBN style).

    Ablation (``aggregation: "mean"``, PRR-FL without PFA): the deputies' shared parameters are averaged with the
    same ``weighting`` (:func:`~medfl.common.params.weighted_mean`) and every client receives that one mean;
    BatchNorm still stays on the clients, so this is FedBN on the deputies, with DET on the clients unchanged.

    Selection (the original's): the clients report their personalised model's validation metrics after local
    training; the unweighted client mean of ``selection_metric`` picks the best round among the last
    ``1 - selection_start`` share of rounds (``r >= ceil(selection_start * num_rounds)``, the last round at least).
    The next task (the next round's, or the final validation) tells every client to save its personalised model,
    unchanged since, as ``best_personal_model.pt`` in its app folder.

    Cross-site evaluation (``cross_site_evaluation``): the clients send their personalised models as they are at
    the end (the only time these leave the sites) and every site scores all of them on its own data.

    Settings: :class:`PFASettings`.
    """

    Settings = PFASettings

    def __init__(self, **settings):
        super().__init__(**settings)
        self.best_personal_score = -math.inf
        self.new_best_round: Optional[int] = None
        self.personal_specs: Dict[str, ArraySpec] = {}

    def initial_models(self) -> Dict[str, Params]:
        seed_everything(self.settings.seed)
        network = build_network(self.settings.network.name, **self.settings.network.args)
        self.personal_specs = array_specs(to_numpy(network.state_dict()))
        initial = shared_params(network)
        return {deputy_name(client): dict(initial) for client in sorted(c.name for c in self.engine.get_clients())}

    def payload_for(self, client: str) -> Params:
        if deputy_name(client) not in self.models:
            raise ValueError(f"no deputy for client {client}; the run started with {sorted(self.models)}")
        return bundle({DEPUTY: self.models[deputy_name(client)]})

    def payload_meta(self, client: str) -> dict:
        if self.new_best_round is None:
            return {}
        return {BEST_PERSONAL_ROUND: self.new_best_round, BEST_PERSONAL_SCORE: self.best_personal_score}

    def expected_result(self, client: str, task: str, sent: FLModel) -> ResultSpec:
        """The deputy as sent (without BatchNorm), and after training the metrics the selection uses."""
        spec = super().expected_result(client, task, sent)
        if task == self.settings.train_task:
            spec.meta[TRAINED_METRICS] = check_metrics
        return spec

    def task_for(self, task: str, client: str, round_number: int) -> Tuple[FLModel, ResultSpec]:
        """The submit task carries nothing; its reply is one whole personalised model of the job's network."""
        if task != self.settings.submit_task:
            return super().task_for(task, client, round_number)
        expected = ResultSpec(params=bundle({PERSONAL: self.personal_specs}))
        return FLModel(params={}, current_round=round_number), expected

    def cross_site_models(self) -> Dict[str, Params]:
        """Every client's personalised model, asked for on the submit task (``personal_<client>``)."""
        clients = sorted(c.name for c in self.engine.get_clients())
        results = self.scatter_and_gather(self.settings.submit_task, clients, self.num_rounds)
        if results is None:
            return {}
        return {f"{PERSONAL}_{client}": bundle({PERSONAL: unbundle(result.params)[PERSONAL]})
                for client, result in results.items()}

    def first_selection_round(self) -> int:
        return min(math.ceil(self.settings.selection_start * self.num_rounds), self.num_rounds - 1)

    def track_best(self, results: Dict[str, FLModel], round_number: int) -> None:
        super().track_best(results, round_number)
        trained = {client: (r.meta or {}).get(TRAINED_METRICS) for client, r in results.items()}
        if not any(trained.values()):
            return  # the final validation: nothing was trained, the last selection is still to be delivered
        self.new_best_round = None
        missing = sorted(client for client, metrics in trained.items() if self.settings.selection_metric not in (metrics or {}))
        if missing:
            self.warning(f"round {round_number}: no '{self.settings.selection_metric}' after training from {missing}; "
                         "this round cannot be selected")
            return
        score = float(np.mean([metrics[self.settings.selection_metric] for metrics in trained.values()]))
        self._add_scalar(f"selection/mean_{self.settings.selection_metric}", score, round_number)
        if round_number >= self.first_selection_round() and score > self.best_personal_score:
            self.best_personal_score = score
            self.new_best_round = round_number
            self.info(f"round {round_number}: new best personalised models, mean {self.settings.selection_metric} {score:.4f}")

    def aggregate(self, results: Dict[str, FLModel]) -> None:
        rounds = {r.current_round for r in results.values()}
        if len(rounds) != 1:
            raise ValueError(f"results of one round expected, got rounds {sorted(rounds)}")
        current_round = rounds.pop()
        clients = sorted(results)
        deputies = [self.received_deputy(client, results[client]) for client in clients]
        weights = client_weights({client: results[client] for client in clients}, self.settings.weighting)
        if self.settings.aggregation == "mean":
            aggregated = self.mean_deputies(deputies, weights, current_round)
        else:
            aggregated = self.pfa_deputies(deputies, weights, current_round)
        self.models.update({deputy_name(client): state for client, state in zip(clients, aggregated)})

    @staticmethod
    def received_deputy(client: str, result: FLModel) -> Params:
        """The deputy's shared parameters in a client's training result."""
        received = unbundle(result.params)
        if DEPUTY not in received:
            raise ValueError(f"client {client} sent no deputy parameters")
        return received[DEPUTY]

    def pfa_deputies(self, deputies: List[Params], weights: List[float], current_round: int) -> List[Params]:
        """PFA (Sec. 2.2) at this round's ratio L: one aggregated deputy per client, in the order of ``deputies``."""
        ratio = pfa_ratio(current_round, self.num_rounds, self.settings.pfa_ratio_start, self.settings.pfa_ratio_end)
        tensors = [{key: torch.tensor(value) for key, value in deputy.items()} for deputy in deputies]
        aggregated = pfa_aggregate_state_dicts(tensors, ratio, weights_k=weights)
        self._add_scalar("pfa/ratio", ratio, current_round)
        self.info(f"round {current_round}: PFA of {len(deputies)} deputies with L = {ratio:.3f}")
        return [to_numpy(state) for state in aggregated]

    def mean_deputies(self, deputies: List[Params], weights: List[float], current_round: int) -> List[Params]:
        """The ablation without PFA: every client gets the same weighted mean of the deputies."""
        mean = weighted_mean(deputies, weights)
        self.info(f"round {current_round}: mean of {len(deputies)} deputies ({self.settings.weighting} weights)")
        return [dict(mean) for _ in deputies]

    def extra_state(self) -> dict:
        return {"best_personal_score": self.best_personal_score, "new_best_round": self.new_best_round}

    def load_extra_state(self, state: dict) -> None:
        self.best_personal_score = state["best_personal_score"]
        self.new_best_round = state["new_best_round"]
