"""FedMAS servers: MAS aggregation (§3.5 (d)), and on Fed-ISIC2019 pooled balanced accuracy every round (§3.7).

:class:`FedMASController` serves the three Fed-ISIC2019 jobs: FedMAS (``aggregation="mas"``; ``mas_inv`` and
``mas_DRW`` are the original's variants) and the BSM-FL and FedAvg baselines (``aggregation="avg"``: weights
n_k / sum n). :class:`MASController` is the aggregation alone, with the common best-model tracking (the clients'
reported validation metric), for a federation that compares methods on their own metric (``fedmas_dermoscopy``).
"""

from __future__ import annotations

import os
from functools import partial
from typing import Dict, List, Optional

from nvflare.app_common.abstract.fl_model import FLModel

from medfl.common.config import config_path
from medfl.common.controller import RoundController, checkpoint_name
from medfl.common.errors import DataError
from medfl.common.executor import NUM_VAL_SAMPLES, seed_everything
from medfl.common.io import atomic_write_json
from medfl.common.networks import build_network
from medfl.common.params import Params, bundle, to_numpy, unbundle, weighted_mean
from medfl.common.validation import ResultSpec, check_non_negative, check_sample_count

from . import networks  # noqa: F401  (registers resnet_classifier and free_head_resnet)
from .aggregation import aggregation_weights, canonical_method
from .data import ISIC_CLASSES
from .evaluation import (
    TESTING,
    VALIDATION,
    balanced_accuracy_from_counts,
    check_class_counts,
    pool_counts,
    select_rounds,
)
from .executor import AGGREGATION, CLASS_COUNTS, PRIOR_SHA256, ROBUST_FACTOR, SAMPLES_PER_EPOCH

HISTORY_FILE = "balanced_accuracy.json"
TEST_SELECTED = "best_test_selected"  # checkpoint kind of the original's test-selected model
SPLITS = (VALIDATION, TESTING)


class MASController(RoundController):
    """MAS aggregation (§3.5 (d)): ``theta <- sum_k alpha_k theta_k`` over every state-dict entry with
    ``alpha_k = aggregation_weights(aggregation, n_k, r_k, round, num_rounds)``; clients receive the global model
    every round and are told the aggregation method in the payload meta. Every client must hold the same prior
    (checked by its SHA-256). The best global model is kept by the clients' validation metric
    (:meth:`RoundController.track_best`).

    ``config_train.json`` (read by the server too): ``network`` and ``seed`` build the initial model;
    ``trunk_checkpoint`` (optional, ``DATASET_ROOT`` allowed) initialises its trunk from a torchvision ResNet
    file, as the original's ImageNet initialisation.

    Args:
        aggregation: ``"mas"``, ``"avg"``, ``"mas_inv"`` or ``"mas_DRW"`` (case-insensitive).
        **kwargs: see :class:`~medfl.common.controller.RoundController`.
    """

    def __init__(self, aggregation: str = "mas", **kwargs):
        super().__init__(**kwargs)
        self.aggregation = canonical_method(aggregation)

    def initial_models(self) -> Dict[str, Params]:
        seed_everything(int(self.train_config.get("seed", 0)))
        network = self.train_config.get("network", {"name": "free_head_resnet"})
        model = build_network(network["name"], **network.get("args", {}))
        if self.train_config.get("trunk_checkpoint"):
            path = config_path(self.train_config, "trunk_checkpoint", "server")
            model.load_trunk_checkpoint(path)
            self.info(f"initial trunk loaded from {path}")
        return {"global": to_numpy(model.state_dict())}

    def payload_for(self, client: str) -> Params:
        return bundle({"global": self.models["global"]})

    def payload_meta(self, client: str) -> dict:
        return {AGGREGATION: self.aggregation}

    def expected_result(self, client: str, task: str, sent: FLModel) -> ResultSpec:
        """After training, also the sample count n_k of an epoch and (but for ``avg``) a robust factor r_k >= 0."""
        spec = super().expected_result(client, task, sent)
        if task == self.train_task:
            spec.meta[SAMPLES_PER_EPOCH] = partial(check_sample_count, maximum=self.max_client_samples)
            if self.aggregation != "avg":
                spec.meta[ROBUST_FACTOR] = check_non_negative
        return spec

    def aggregate(self, results: Dict[str, FLModel]) -> None:
        clients = sorted(results)
        self._check_same_prior(results)
        samples = [_meta(results, client, SAMPLES_PER_EPOCH) for client in clients]
        factors = None
        if self.aggregation != "avg":
            factors = [_meta(results, client, ROBUST_FACTOR) for client in clients]
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


class FedMASController(MASController):
    """FedMAS server of the Fed-ISIC2019 jobs: :class:`MASController`'s aggregation, and the original's evaluation.

    Every round the clients report per-class counts of the model they received on their validation and test
    splits. The server computes balanced accuracy per client and pooled over clients (from the summed
    counts), keeps ``best_global_model.pt`` by pooled **validation** balanced accuracy, and, labelled as the
    original's protocol, ``best_test_selected_global_model.pt`` by pooled **test** balanced accuracy (an
    optimistic number). Every round goes to ``balanced_accuracy.json`` in the server's app folder, with the
    selected rounds, the aggregation weights and the robust factors.

    Args: those of :class:`MASController`.
    """

    def __init__(self, aggregation: str = "mas", **kwargs):
        super().__init__(aggregation, **kwargs)
        self.history: List[dict] = []
        self.best_test_score = float("-inf")  # kept apart from best_scores, which hold validation scores

    def record_aggregation(self, round_number: int, summary: Dict[str, dict]) -> None:
        self._record(round_number)["aggregation"] = summary
        self._write_history()

    def expected_result(self, client: str, task: str, sent: FLModel) -> ResultSpec:
        """Every reply also carries the per-class counts of both splits (ISIC 2019's classes)."""
        spec = super().expected_result(client, task, sent)
        spec.checks.append(_class_counts_problem)
        return spec

    # ------------------------------------------------------------------ evaluation and model selection
    def track_best(self, results: Dict[str, FLModel], round_number: int) -> None:
        """Balanced accuracy per client and pooled, for the models sent in ``round_number``; save the bests."""
        record = self._record(round_number)
        record["clients"] = {}
        counts = {split: [] for split in SPLITS}
        for client in sorted(results):
            reported = _meta(results, client, CLASS_COUNTS)
            record["clients"][client] = {}
            for split in SPLITS:
                if split not in reported:
                    raise DataError(f"the client reported no class counts for its '{split}' split", site=client)
                pair = (reported[split]["correct"], reported[split]["total"])
                counts[split].append(pair)
                score = balanced_accuracy_from_counts(*pair)
                record["clients"][client][split] = score
                self._add_scalar(f"{split}/{client}/balanced_accuracy", score, round_number)
        record["pooled"] = {split: balanced_accuracy_from_counts(*pool_counts(counts[split])) for split in SPLITS}
        for split, score in record["pooled"].items():
            self._add_scalar(f"{split}_pooled/balanced_accuracy", score, round_number)
        self.info(f"models sent in round {round_number}: pooled balanced accuracy "
                  f"validation {record['pooled'][VALIDATION]:.4f}, test {record['pooled'][TESTING]:.4f}")
        info = {"round_number": round_number, "pooled_validation": record["pooled"][VALIDATION],
                "pooled_test": record["pooled"][TESTING]}
        if record["pooled"][VALIDATION] > self.best_scores.get("global", float("-inf")):
            self.best_scores["global"] = record["pooled"][VALIDATION]
            self.save_models("best", {"global": self.models["global"]}, **info)
        if record["pooled"][TESTING] > self.best_test_score:
            self.best_test_score = record["pooled"][TESTING]
            self.save_models(TEST_SELECTED, {"global": self.models["global"]}, **info)
        self._write_history()

    def _record(self, round_number: int) -> dict:
        if not self.history or self.history[-1]["round"] != round_number:
            self.history.append({"round": round_number})
        return self.history[-1]

    def _write_history(self) -> None:
        scored = [r for r in self.history if "pooled" in r]
        content = {"aggregation": self.aggregation, "selected": select_rounds(scored), "rounds": self.history}
        atomic_write_json(content, os.path.join(self.get_app_dir(), HISTORY_FILE))

    def run(self) -> None:
        super().run()
        selected = select_rounds([r for r in self.history if "pooled" in r])
        if not selected:
            return
        last = "final model, " + checkpoint_name("last", "global") if self.final_validation else "last measured model"
        lines = [("selected on validation, " + checkpoint_name("best", "global"), "validation_selected"),
                 (last, "last"),
                 ("selected on the TEST split as the original does (optimistic), "
                  + checkpoint_name(TEST_SELECTED, "global"), "test_selected")]
        for label, key in lines:
            record = selected[key]
            self.info(f"{label}: models sent in round {record['round']}, pooled balanced accuracy "
                      f"test {record['pooled'][TESTING]:.4f} (validation {record['pooled'][VALIDATION]:.4f})")

    def extra_state(self) -> dict:
        return {"history": self.history, "best_test_score": self.best_test_score}

    def load_extra_state(self, state: dict) -> None:
        self.history = list(state["history"])
        self.best_test_score = float(state["best_test_score"])


def _class_counts_problem(result: FLModel) -> Optional[str]:
    """What is wrong with a reply's per-class counts (:func:`~.evaluation.check_class_counts`), or ``None``."""
    meta = result.meta or {}
    if CLASS_COUNTS not in meta:
        return f"the reply has no '{CLASS_COUNTS}' in its meta"
    problem = check_class_counts(meta[CLASS_COUNTS], len(ISIC_CLASSES), meta.get(NUM_VAL_SAMPLES))
    return f"{CLASS_COUNTS} {problem}" if problem else None


def _meta(results: Dict[str, FLModel], client: str, key: str):
    """``results[client].meta[key]``, or a clear error naming the client and the missing entry."""
    meta = results[client].meta or {}
    if key not in meta:
        raise DataError(f"the client's reply has no '{key}' in its meta (is it running a medfl.fedmas executor, "
                        f"and a FedMASExecutor for aggregation other than 'avg'?)", site=client)
    return meta[key]
