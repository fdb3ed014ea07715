"""FedMAS servers: MAS aggregation (§3.5 (d)), and the Fed-ISIC2019 job's server with the original's evaluation.

:class:`MASController` is the aggregation alone, with the common best-model tracking (the clients' reported
validation metric), for a federation that compares methods on their own metric (``fedmas_dermoscopy``).
:class:`FedMASController` adds Fed-ISIC2019's ImageNet-initialised model and pooled balanced accuracy
(:class:`~medfl.federations.isic2019.server.ISIC2019Server`) for ``fedmas_isic2019``.
"""

from __future__ import annotations

from functools import partial
from typing import Dict

from pydantic import Field, field_validator

from nvflare.app_common.abstract.fl_model import FLModel

from medfl.common.controller import RoundController, ServerSettings, required_meta
from medfl.common.errors import DataError
from medfl.common.params import Params, bundle, unbundle, weighted_mean
from medfl.common.settings import NetworkSpec
from medfl.common.validation import ResultSpec, check_non_negative, check_sample_count
from medfl.federations.isic2019.protocol import SAMPLES_PER_EPOCH
from medfl.federations.isic2019.server import ISIC2019Server, ISIC2019ServerSettings

from . import networks  # noqa: F401  (registers free_head_resnet)
from .aggregation import aggregation_weights, canonical_method
from .protocol import AGGREGATION, PRIOR_SHA256, ROBUST_FACTOR


class MASSettings(ServerSettings):
    """FedMAS server settings (its workflow ``args`` in ``config_fed_server.json``)."""

    network: NetworkSpec = Field(description="the network of the global model (a free-head network)")
    aggregation: str = Field("mas", description="mas, avg, mas_inv or mas_DRW (case-insensitive), §3.5 (d)")

    @field_validator("aggregation")
    @classmethod
    def _known_method(cls, value: str) -> str:
        return canonical_method(value)


class MASController(RoundController):
    """MAS aggregation (§3.5 (d)): ``theta <- sum_k alpha_k theta_k`` over every state-dict entry with
    ``alpha_k = aggregation_weights(aggregation, n_k, r_k, round, num_rounds)``; clients receive the global model
    every round and are told the aggregation method in the payload meta. Every client must hold the same prior
    (checked by its SHA-256). The best global model is kept by the clients' validation metric
    (:meth:`RoundController.track_best`).

    Settings: :class:`MASSettings`.
    """

    Settings = MASSettings

    @property
    def aggregation(self) -> str:
        return self.settings.aggregation

    def initial_models(self) -> Dict[str, Params]:
        return {"global": self.build_initial_params()}

    def payload_for(self, client: str) -> Params:
        return bundle({"global": self.models["global"]})

    def payload_meta(self, client: str) -> dict:
        return {AGGREGATION: self.aggregation}

    def expected_result(self, client: str, task: str, sent: FLModel) -> ResultSpec:
        """After training, also the sample count n_k of an epoch and (but for ``avg``) a robust factor r_k >= 0."""
        spec = super().expected_result(client, task, sent)
        if task == self.settings.train_task:
            spec.meta[SAMPLES_PER_EPOCH] = partial(check_sample_count, maximum=self.settings.max_client_samples)
            if self.aggregation != "avg":
                spec.meta[ROBUST_FACTOR] = check_non_negative
        return spec

    def aggregate(self, results: Dict[str, FLModel]) -> None:
        clients = sorted(results)
        self._check_same_prior(results)
        samples = [required_meta(results, client, SAMPLES_PER_EPOCH) for client in clients]
        factors = None
        if self.aggregation != "avg":
            factors = [required_meta(results, client, ROBUST_FACTOR) for client in clients]
        round_number = results[clients[0]].current_round
        weights = aggregation_weights(self.aggregation, samples, factors, round_number, self.num_rounds)
        self.models["global"] = weighted_mean([unbundle(results[c].params)["global"] for c in clients], weights)
        summary = {}
        for index, client in enumerate(clients):
            summary[client] = {"weight": weights[index], SAMPLES_PER_EPOCH: samples[index]}
            self._add_scalar(f"aggregation_weight/{client}", weights[index], round_number)
            if factors is not None:
                summary[client][ROBUST_FACTOR] = factors[index]
                self._add_scalar(f"robust_factor/{client}", factors[index], round_number)
        self.info(f"round {round_number} {self.aggregation} weights: "
                  + ", ".join(f"{c}={w:.4f}" for c, w in zip(clients, weights)))
        self.record_aggregation(round_number, summary)

    def record_aggregation(self, round_number: int, summary: Dict[str, dict]) -> None:
        """Keep a round's ``{client: {"weight", "samples_per_epoch"[, "robust_factor"]}}`` (default: only the
        TensorBoard scalars and the log line of :meth:`aggregate`)."""

    def _check_same_prior(self, results: Dict[str, FLModel]) -> None:
        hashes = {client: r.meta.get(PRIOR_SHA256) for client, r in sorted(results.items())}
        if len({h for h in hashes.values() if h}) > 1:
            raise DataError("clients hold different prior checkpoints (SHA-256 "
                            + ", ".join(f"{c}: {h[:12] if h else 'none'}" for c, h in hashes.items())
                            + "); MAS compares divergences across clients, so every client needs the same file")


class FedMASControllerSettings(ISIC2019ServerSettings, MASSettings):
    """FedMAS on Fed-ISIC2019: MAS's settings and the federation's initial trunk."""


class FedMASController(ISIC2019Server, MASController):
    """FedMAS on Fed-ISIC2019 (``jobs/fedmas_isic2019``): MAS aggregation and the federation's pooled balanced
    accuracy; each round's weights and robust factors go to its ``balanced_accuracy.json`` history."""

    Settings = FedMASControllerSettings

    def record_aggregation(self, round_number: int, summary: Dict[str, dict]) -> None:
        self.record(round_number, aggregation=summary)
