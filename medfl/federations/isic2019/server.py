"""Fed-ISIC2019's server side (FedMAS's setting, §3.7): the ImageNet-initialised model and pooled balanced accuracy.

:class:`ISIC2019Server` is mixed into an aggregation controller (FedAvg for the baselines, MAS for FedMAS):
``class C(ISIC2019Server, FedAvgController)``.
"""

from __future__ import annotations

import os
from typing import Dict, List, Literal, Optional

from pydantic import Field

from nvflare.app_common.abstract.fl_model import FLModel

from medfl.common.controller import SERVER_SITE, RoundController, ServerSettings, checkpoint_name, required_meta
from medfl.common.errors import DataError
from medfl.common.io import atomic_write_json
from medfl.common.networks import build_network
from medfl.common.params import Params, to_numpy
from medfl.common.protocol import NUM_VAL_SAMPLES
from medfl.common.runtime import seed_everything
from medfl.common.settings import NetworkSpec
from medfl.common.validation import ResultSpec

from . import networks  # noqa: F401  (registers resnet_classifier)
from .data import ISIC_CLASSES
from .evaluation import (
    TESTING,
    VALIDATION,
    balanced_accuracy_from_counts,
    check_class_counts,
    pool_counts,
    select_rounds,
)
from .protocol import CLASS_COUNTS

HISTORY_FILE = "balanced_accuracy.json"
TEST_SELECTED = "best_test_selected"  # checkpoint kind of the original's test-selected model
SPLITS = (VALIDATION, TESTING)


class ISIC2019ServerSettings(ServerSettings):
    """What the Fed-ISIC2019 server side adds to an aggregation controller's settings."""

    network: NetworkSpec = Field(description="the network of the global model (a torchvision-layout ResNet)")
    best_weighting: Literal["pooled_counts"] = Field("pooled_counts", description=(
        "the best-model score: balanced accuracy of the clients' per-class counts summed over the clients (the "
        "original's pooled test set, §3.7); a mean of per-client scores does not apply"))
    trunk_checkpoint: Optional[str] = Field(None, description=(
        "a torchvision ResNet file initialising the trunk (ImageNet, as the original); DATASET_ROOT allowed"))


class ISIC2019Server(RoundController):
    """Fed-ISIC2019 server side as FedMAS evaluates it (§3.7); list it before the aggregation controller.

    * Initial model: ``network`` and ``seed``; ``trunk_checkpoint`` (:class:`ISIC2019ServerSettings`)
      initialises the ResNet trunk from a torchvision file, as the original's ImageNet initialisation.
    * Every round the clients report per-class counts of the model they received on their validation and test
      splits. The server computes balanced accuracy per client and pooled over clients (from the summed
      counts), keeps ``best_global_model.pt`` by pooled **validation** balanced accuracy, and, labelled as the
      original's protocol, ``best_test_selected_global_model.pt`` by pooled **test** balanced accuracy (an
      optimistic number). Every round goes to ``balanced_accuracy.json`` in the server's app folder, with the
      selected rounds and what the aggregation recorded (:meth:`record`).
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.history: List[dict] = []
        self.best_test_score = float("-inf")  # kept apart from best_scores, which hold validation scores

    def initial_models(self) -> Dict[str, Params]:
        seed_everything(self.settings.seed)
        model = build_network(self.settings.network.name, **self.settings.network.args)
        if self.settings.trunk_checkpoint:
            path = self.settings.path("trunk_checkpoint", SERVER_SITE)
            model.load_trunk_checkpoint(path)
            self.info(f"initial trunk loaded from {path}")
        return {"global": to_numpy(model.state_dict())}

    def expected_result(self, client: str, task: str, sent: FLModel) -> ResultSpec:
        """Every reply also carries the per-class counts of both splits (ISIC 2019's classes)."""
        spec = super().expected_result(client, task, sent)
        spec.checks.append(_class_counts_problem)
        return spec

    def history_header(self) -> Dict[str, str]:
        """Entries at the top of ``balanced_accuracy.json`` (default: the aggregation rule's name)."""
        return {"aggregation": getattr(self, "aggregation", type(self).__name__)}

    def record(self, round_number: int, **entries) -> None:
        """Add ``entries`` (e.g. the aggregation weights) to the history record of ``round_number``."""
        self._record(round_number).update(entries)
        self._write_history()

    # ------------------------------------------------------------------ evaluation and model selection
    def track_best(self, results: Dict[str, FLModel], round_number: int) -> None:
        """Balanced accuracy per client and pooled, for the models sent in ``round_number``; from round
        :meth:`~medfl.common.controller.RoundController.first_best_round` on (``best_from_round``,
        ``best_selection_start``), save the bests."""
        record = self._record(round_number)
        record["clients"] = {}
        counts = {split: [] for split in SPLITS}
        for client in sorted(results):
            reported = required_meta(results, client, CLASS_COUNTS)
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
        if round_number < self.first_best_round():
            self._write_history()
            return
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
        selected = select_rounds(scored, self.first_best_round())
        content = {**self.history_header(), "selected": selected, "rounds": self.history}
        atomic_write_json(content, os.path.join(self.get_app_dir(), HISTORY_FILE))

    def run(self) -> None:
        super().run()
        selected = select_rounds([r for r in self.history if "pooled" in r], self.first_best_round())
        if not selected:
            return
        last = "final model, " + checkpoint_name("last", "global") if self.settings.final_validation else "last measured model"
        lines = [("selected on validation, " + checkpoint_name("best", "global"), "validation_selected"),
                 (last, "last"),
                 ("selected on the TEST split as the original does (optimistic), "
                  + checkpoint_name(TEST_SELECTED, "global"), "test_selected")]
        for label, key in lines:
            record = selected[key]
            self.info(f"{label}: models sent in round {record['round']}, pooled balanced accuracy "
                      f"test {record['pooled'][TESTING]:.4f} (validation {record['pooled'][VALIDATION]:.4f})")

    def extra_state(self) -> dict:
        return {**super().extra_state(), "history": self.history, "best_test_score": self.best_test_score}

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)
        self.history = list(state["history"])
        self.best_test_score = float(state["best_test_score"])


def _class_counts_problem(result: FLModel) -> Optional[str]:
    """What is wrong with a reply's per-class counts (:func:`~.evaluation.check_class_counts`), or ``None``."""
    meta = result.meta or {}
    if CLASS_COUNTS not in meta:
        return f"the reply has no '{CLASS_COUNTS}' in its meta"
    problem = check_class_counts(meta[CLASS_COUNTS], len(ISIC_CLASSES), meta.get(NUM_VAL_SAMPLES))
    return f"{CLASS_COUNTS} {problem}" if problem else None
