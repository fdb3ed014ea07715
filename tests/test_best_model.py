"""RoundController.track_best: the best-model score weighs the clients' validation metrics by ``best_weighting``
(validation samples; local steps as FedSM's ``IntimeModelSelector(weigh_by_local_iter=True)``; equal as HarmoFL's
``mean(val_acc)``) and saves a best only from round ``best_from_round`` on (FedSM: never round 0) and inside the
window of ``best_selection_start`` (PRR-FL's last 20 % of rounds)."""

from __future__ import annotations

import math
from typing import Dict, Optional

import numpy as np
import pytest
from fake_transport import attach, load

from nvflare.app_common.abstract.fl_model import FLModel

from medfl.common.controller import RoundController, checkpoint_name
from medfl.common.params import bundle, unbundle
from medfl.common.protocol import NUM_TRAIN_SAMPLES, NUM_TRAIN_STEPS, NUM_VAL_SAMPLES
from medfl.common.settings import ConfigError

CLIENTS = ["site-a", "site-b"]
# site-a validates 0.9 on 1 sample after 3 steps, site-b 0.3 on 3 samples after 1 step
METRIC = {"site-a": 0.9, "site-b": 0.3}
VAL_SAMPLES = {"site-a": 1, "site-b": 3}
STEPS = {"site-a": 3, "site-b": 1}
SCORES = {"validation_samples": (0.9 * 1 + 0.3 * 3) / 4, "steps": (0.9 * 3 + 0.3 * 1) / 4, "equal": (0.9 + 0.3) / 2}


class OneModel(RoundController):
    """One model, ``global``, averaged with equal weights (aggregation is not what these tests are about)."""

    def initial_models(self):
        return {"global": {"w": np.zeros(2, np.float32)}}

    def payload_for(self, client):
        return bundle({"global": self.models["global"]})

    def aggregate(self, results):
        self.models["global"] = {"w": np.mean([unbundle(r.params)["global"]["w"] for r in results.values()], axis=0)}


def controller(tmp_path, answer=None, **settings) -> OneModel:
    made = OneModel(task_check_period=0.01, client_timeout=0, **settings)
    attach(made, tmp_path, CLIENTS, answer or (lambda client, task, sent: None), {})
    made.models = made.initial_models()
    return made


def result(client: str, metric: Optional[float] = None, steps: bool = True, **meta) -> FLModel:
    """A client's reply: its validation metric of ``global``, its validation samples and (``steps``) its local steps."""
    meta = {NUM_VAL_SAMPLES: VAL_SAMPLES[client], **({NUM_TRAIN_STEPS: STEPS[client]} if steps else {}), **meta}
    return FLModel(metrics={"global": METRIC[client] if metric is None else metric}, meta=meta)


def results(**kwargs) -> Dict[str, FLModel]:
    return {client: result(client, **kwargs) for client in CLIENTS}


def best(made: OneModel) -> dict:
    return load(made.app_dir / checkpoint_name("best", "global"))


@pytest.mark.parametrize("weighting", sorted(SCORES))
def test_the_score_weighs_the_clients_by_best_weighting(tmp_path, weighting):
    made = controller(tmp_path, best_weighting=weighting)
    made.track_best(results(), 0)
    assert made.best_scores["global"] == pytest.approx(SCORES[weighting])
    assert best(made)["score"] == pytest.approx(SCORES[weighting]) and best(made)["round_number"] == 0


def test_the_default_is_the_validation_size_rule():
    made = OneModel()
    assert (made.settings.best_weighting, made.settings.best_from_round) == ("validation_samples", 0)


def test_no_best_before_best_from_round(tmp_path):
    """FedSM (§6.3): round 0 is never a best round; the round-0 models are scored but not kept."""
    made = controller(tmp_path, best_from_round=1)
    made.track_best(results(metric=1.0), 0)
    assert made.best_scores == {} and not (made.app_dir / checkpoint_name("best", "global")).exists()
    made.track_best(results(), 1)
    assert best(made)["round_number"] == 1 and best(made)["score"] == pytest.approx(SCORES["validation_samples"])


@pytest.mark.parametrize("num_rounds, final_validation, first", [
    (50, True, 41),  # PRR-FL's a_iter >= 40 of 50: the aggregates of rounds 40..49, sent in rounds 41..50
    (10, True, 9),
    (3, True, 3),  # ceil(2.4) + 1 = 4 is past the final validation (3): the last validated models at least
    (3, False, 2),
])
def test_best_selection_start_opens_the_window_after_that_share_of_rounds(num_rounds, final_validation, first):
    made = OneModel(num_rounds=num_rounds, final_validation=final_validation, best_selection_start=0.8)
    assert made.first_best_round() == first
    assert OneModel(num_rounds=num_rounds, best_from_round=1).first_best_round() == 1, "no window by default"


def test_no_best_before_the_selection_window(tmp_path):
    """The later of best_from_round and the window applies; the rounds before it are scored, not kept."""
    made = controller(tmp_path, num_rounds=10, best_selection_start=0.5, best_from_round=2)
    assert made.first_best_round() == 6  # ceil(0.5 * 10) + 1
    for round_number in range(6):
        made.track_best(results(metric=1.0), round_number)
    assert made.best_scores == {} and not (made.app_dir / checkpoint_name("best", "global")).exists()
    made.track_best(results(), 6)
    assert best(made)["round_number"] == 6


def test_the_final_validation_takes_each_clients_steps_from_its_last_training_result(tmp_path):
    made = controller(tmp_path, best_weighting="steps")
    made.track_best(results(metric=0.0), 0)
    made.track_best(results(steps=False), 1)  # validation only: no step count in the results
    assert made.best_scores["global"] == pytest.approx(SCORES["steps"])
    assert made.log["warning"] == []


def test_without_a_training_result_in_this_run_the_final_validation_weighs_equally_and_says_so_once(tmp_path):
    """A resumed run whose rounds were all done before: the clients trained in no round of this run."""
    made = controller(tmp_path, best_weighting="steps")
    made.track_best(results(steps=False), 2)
    assert made.best_scores["global"] == pytest.approx(SCORES["equal"])
    assert made.log["warning"] == ["round 2: no local step count from ['site-a', 'site-b'] in this run: best-model "
                                   "scores of these results weigh the clients equally"]


def test_a_client_of_weight_zero_adds_nothing_and_a_zero_total_skips_the_model(tmp_path):
    made = controller(tmp_path)
    empty = result("site-b", metric=math.nan, **{NUM_VAL_SAMPLES: 0})
    made.track_best({"site-a": result("site-a"), "site-b": empty}, 0)
    assert made.best_scores["global"] == pytest.approx(METRIC["site-a"])
    made.track_best({"site-b": empty}, 1)
    assert made.best_scores["global"] == pytest.approx(METRIC["site-a"]) and best(made)["round_number"] == 0
    assert made.log["warning"] == ["round 1: global not scored: its clients' best-model weights (validation_samples) "
                                   "sum to 0"]


def test_a_run_scores_its_final_validation_by_the_steps_of_the_last_round(tmp_path):
    """The real loop: two rounds, then the validation-only round of the final models (FedSM's settings)."""

    def answer(client: str, task: str, sent: FLModel) -> FLModel:
        if task == "validate":
            return result(client, steps=False)
        first = sent.current_round == 0  # round 0's models would be best under any rule but FedSM's
        return FLModel(params=dict(sent.params), current_round=sent.current_round,
                       metrics={"global": 1.0 if first else METRIC[client] / 2},
                       meta={NUM_VAL_SAMPLES: VAL_SAMPLES[client], NUM_TRAIN_SAMPLES: 4,
                             NUM_TRAIN_STEPS: 1 if first else STEPS[client]})

    made = controller(tmp_path, answer, num_rounds=2, best_weighting="steps", best_from_round=1)
    made.run()
    assert made.log["panic"] == [] and made.log["warning"] == []
    assert best(made)["round_number"] == 2, "the final models, scored with the steps of round 1"
    assert best(made)["score"] == pytest.approx(SCORES["steps"])


@pytest.mark.parametrize("final_validation, num_rounds", [(True, 2), (False, 1)])
def test_best_from_round_after_the_last_validated_round_is_an_error(final_validation, num_rounds):
    with pytest.raises(ConfigError, match="best_from_round 3 is after the last validated round"):
        OneModel(num_rounds=num_rounds, final_validation=final_validation, best_from_round=3)
