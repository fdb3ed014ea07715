"""FedMAS server logic without the simulator: pooled balanced accuracy from counts, model selection, MAS weights."""

import json
import math

import numpy as np
import pytest
import torch

from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.fl_model import FLModel

from medfl.common.errors import DataError
from medfl.common.metrics import balanced_accuracy
from medfl.common.params import bundle
from medfl.common.settings import ConfigError
from medfl.federations.isic2019.evaluation import (
    balanced_accuracy_from_counts,
    check_class_counts,
    class_hits,
    pool_counts,
    select_rounds,
)
from medfl.federations.isic2019.protocol import CLASS_COUNTS, SAMPLES_PER_EPOCH
from medfl.federations.isic2019.server import HISTORY_FILE
from medfl.fedmas.aggregation import aggregation_weights, canonical_method
from medfl.fedmas.controller import FedMASController
from medfl.fedmas.protocol import PRIOR_SHA256, ROBUST_FACTOR

N_CLASSES = 4


NETWORK = {"name": "free_head_resnet", "args": {"n_classes": 8, "prior_dim": 512, "depth": 18}}


def test_counts_give_sklearn_balanced_accuracy_per_client_and_pooled():
    rng = np.random.default_rng(0)
    clients = []
    for size, classes in ((40, [0, 1]), (25, [1, 2, 3]), (7, [3])):  # absent classes, as in Fed-ISIC2019
        labels = rng.choice(classes, size)
        clients.append((labels, rng.integers(0, N_CLASSES, size)))
    counts = [class_hits(labels, predictions, N_CLASSES) for labels, predictions in clients]
    for (labels, predictions), pair in zip(clients, counts):
        assert balanced_accuracy_from_counts(*pair) == pytest.approx(balanced_accuracy(labels, predictions))
    pooled = balanced_accuracy_from_counts(*pool_counts(counts))
    all_labels = np.concatenate([labels for labels, _ in clients])
    all_predictions = np.concatenate([predictions for _, predictions in clients])
    assert pooled == pytest.approx(balanced_accuracy(all_labels, all_predictions))
    mean_of_clients = np.mean([balanced_accuracy_from_counts(*pair) for pair in counts])
    assert pooled != pytest.approx(mean_of_clients)  # pooling counts is not averaging percentages


def test_counts_errors_and_empty_split():
    assert math.isnan(balanced_accuracy_from_counts([0, 0], [0, 0]))
    with pytest.raises(ValueError, match="do not fit"):
        balanced_accuracy_from_counts([3, 0], [2, 1])
    with pytest.raises(ValueError, match=r"outside 0..3"):
        class_hits(np.array([4]), np.array([0]), N_CLASSES)


def test_select_rounds_takes_the_first_best_of_each_split_and_the_last():
    history = [{"round": r, "pooled": {"validation": v, "testing": t}}
               for r, (v, t) in enumerate([(0.2, 0.5), (0.4, 0.3), (0.4, 0.6), (0.1, 0.2)])]
    selected = select_rounds(history)
    assert selected["validation_selected"]["round"] == 1
    assert selected["test_selected"]["round"] == 2
    assert selected["last"]["round"] == 3
    assert select_rounds([]) == {}
    later = select_rounds(history, first_round=2)  # the original never evaluates the initial model (§3.7)
    assert (later["validation_selected"]["round"], later["test_selected"]["round"]) == (2, 2)


def test_aggregation_method_names():
    assert canonical_method("MAS") == "mas" and canonical_method("MAS_drw") == "mas_DRW"
    with pytest.raises(ConfigError, match="unknown aggregation method 'fedprox'"):
        FedMASController(aggregation="fedprox", network=NETWORK)


def make_controller(tmp_path, aggregation="mas", num_rounds=10, **settings):
    controller = FedMASController(aggregation=aggregation, num_rounds=num_rounds, network=NETWORK, **settings)
    controller.fl_ctx = FLContext()
    controller.get_app_dir = lambda: str(tmp_path)
    controller.models = {"global": {"w": np.zeros(2, dtype=np.float32), "n": np.array(0, dtype=np.int64)}}
    return controller


def reply(value, counts, round_number=0, factor=None, samples=64, prior="abc"):
    meta = {SAMPLES_PER_EPOCH: samples, CLASS_COUNTS: counts, PRIOR_SHA256: prior}
    if factor is not None:
        meta[ROBUST_FACTOR] = factor
    params = bundle({"global": {"w": np.full(2, value, dtype=np.float32), "n": np.array(10, dtype=np.int64)}})
    return FLModel(params=params, meta=meta, current_round=round_number)


def split_counts(val_correct, test_correct, total=(2, 2, 0, 0)):
    return {"validation": {"correct": list(val_correct), "total": list(total)},
            "testing": {"correct": list(test_correct), "total": list(total)}}


@pytest.mark.parametrize("method", ["mas", "mas_inv", "avg", "mas_DRW"])
def test_aggregate_uses_the_configured_weights(tmp_path, method):
    controller = make_controller(tmp_path, method)
    counts = split_counts([1, 1, 0, 0], [1, 1, 0, 0])
    results = {"b": reply(1.0, counts, factor=0.3, samples=192), "a": reply(3.0, counts, factor=0.1, samples=64)}
    controller.aggregate(results)
    alpha = aggregation_weights(method, [64, 192], [0.1, 0.3], 0, 10)  # clients in name order: a, b
    assert np.allclose(controller.models["global"]["w"], alpha[0] * 3.0 + alpha[1] * 1.0)
    # 0-d BN counters stay arrays: numpy scalars would not load from server_state.pt with weights_only=True
    counter = controller.models["global"]["n"]
    assert isinstance(counter, np.ndarray) and counter.dtype == np.int64
    record = json.loads((tmp_path / HISTORY_FILE).read_text())["rounds"][0]["aggregation"]
    assert record["a"]["weight"] == pytest.approx(alpha[0])
    assert (ROBUST_FACTOR in record["a"]) == (method != "avg")


def test_mas_without_robust_factor_or_with_different_priors_fails_clearly(tmp_path):
    controller = make_controller(tmp_path, "mas")
    counts = split_counts([1, 1, 0, 0], [1, 1, 0, 0])
    with pytest.raises(DataError, match=r"\[a\] the client's reply has no 'robust_factor'"):
        controller.aggregate({"a": reply(1.0, counts), "b": reply(1.0, counts, factor=0.2)})
    with pytest.raises(DataError, match="clients hold different prior checkpoints"):
        controller.aggregate({"a": reply(1.0, counts, factor=0.1, prior="x"), "b": reply(1.0, counts, factor=0.2)})


def test_track_best_selects_on_pooled_validation_and_keeps_the_test_selected_model_apart(tmp_path):
    controller = make_controller(tmp_path)
    rounds = [  # (validation correct, test correct) of clients a and b, 2 + 2 samples per class and split
        ({"a": ([1, 0, 0, 0], [2, 2, 0, 0]), "b": ([1, 0, 0, 0], [2, 2, 0, 0])}),  # val 0.25, test 1.0
        ({"a": ([2, 1, 0, 0], [1, 0, 0, 0]), "b": ([2, 1, 0, 0], [1, 0, 0, 0])}),  # val 0.75, test 0.25
    ]
    for round_number, by_client in enumerate(rounds):
        controller.models["global"]["w"] = np.full(2, round_number, dtype=np.float32)
        controller.track_best({c: reply(0.0, split_counts(*pair), round_number) for c, pair in by_client.items()},
                              round_number)
    best = torch.load(tmp_path / "best_global_model.pt", weights_only=True)
    test_selected = torch.load(tmp_path / "best_test_selected_global_model.pt", weights_only=True)
    assert best["round_number"] == 1 and best["pooled_validation"] == pytest.approx(0.75)
    assert test_selected["round_number"] == 0 and test_selected["pooled_test"] == pytest.approx(1.0)
    assert torch.equal(best["state_dict"]["w"], torch.ones(2))
    assert controller.best_scores == {"global": pytest.approx(0.75)}  # validation scores only
    history = json.loads((tmp_path / HISTORY_FILE).read_text())
    assert history["selected"]["validation_selected"]["round"] == 1
    assert history["selected"]["test_selected"]["round"] == 0
    assert history["rounds"][0]["clients"]["a"]["testing"] == pytest.approx(1.0)


PERFECT, HALF = ([2, 2, 0, 0], [2, 2, 0, 0]), ([1, 1, 0, 0], [1, 1, 0, 0])  # correct per class: val, test


def test_track_best_keeps_no_model_before_best_from_round(tmp_path):
    """§3.7: the best round is one of the aggregates; the initial model (sent in round 0) is never selected."""
    controller = make_controller(tmp_path, best_from_round=1)
    for round_number, pair in enumerate([PERFECT, HALF]):
        controller.track_best({"a": reply(0.0, split_counts(*pair), round_number)}, round_number)
    for kind in ("best", "best_test_selected"):
        assert torch.load(tmp_path / f"{kind}_global_model.pt", weights_only=True)["round_number"] == 1
    history = json.loads((tmp_path / HISTORY_FILE).read_text())
    assert {history["selected"][k]["round"] for k in ("validation_selected", "test_selected")} == {1}


def test_track_best_keeps_no_model_before_the_selection_window(tmp_path):
    """best_selection_start applies to the pooled score too: no workflow key of the server is left unread."""
    controller = make_controller(tmp_path, best_selection_start=0.5)
    first = controller.first_best_round()
    assert first == 6  # ceil(0.5 * 10) + 1
    for round_number in range(first):
        controller.track_best({"a": reply(0.0, split_counts(*PERFECT), round_number)}, round_number)
    assert not (tmp_path / "best_global_model.pt").exists()
    controller.track_best({"a": reply(0.0, split_counts(*HALF), first)}, first)
    assert torch.load(tmp_path / "best_global_model.pt", weights_only=True)["round_number"] == first


def test_the_score_is_the_pooled_counts_and_no_other_weighting():
    """The clients' per-class counts are pooled; a mean of per-client scores (best_weighting) does not apply."""
    assert FedMASController(network=NETWORK).settings.best_weighting == "pooled_counts"
    with pytest.raises(ConfigError, match="best_weighting"):
        FedMASController(network=NETWORK, best_weighting="equal")


def test_track_best_names_a_client_without_counts(tmp_path):
    controller = make_controller(tmp_path)
    broken = FLModel(params={}, meta={SAMPLES_PER_EPOCH: 1})
    with pytest.raises(DataError, match=r"\[b\] the client's reply has no 'class_counts'"):
        controller.track_best({"b": broken}, 0)


@pytest.mark.parametrize("counts, problem", [
    ([1, 2], "is a list, not a dict of splits"),
    ({"validation": split_counts([1, 1, 0, 0], [1, 1, 0, 0])["validation"]},
     "has no 'correct' and 'total' counts for its 'testing' split"),
    ({**split_counts([1, 1, 0, 0], [1, 1, 0, 0]), "testing": {"correct": [1, 1], "total": [2, 2]}},
     "'testing' correct is [1, 1], not 4 counts >= 0"),
    (split_counts([1, -1, 0, 0], [1, 1, 0, 0]), "'validation' correct is [1, -1, 0, 0], not 4 counts >= 0"),
    (split_counts([1.0, 1, 0, 0], [1, 1, 0, 0]), "'validation' correct is [1.0, 1, 0, 0], not 4 counts >= 0"),
    (split_counts([1, 1, 0, 0], [3, 1, 0, 0]), "'testing' has more correct predictions [3, 1, 0, 0] than samples "
                                               "[2, 2, 0, 0]"),
])
def test_class_counts_that_cannot_be_true_are_named(counts, problem):
    assert check_class_counts(counts, 4, 4) == problem
    assert check_class_counts(split_counts([1, 1, 0, 0], [1, 1, 0, 0]), 4, 4) is None
    assert check_class_counts(split_counts([1, 1, 0, 0], [1, 1, 0, 0]), 4, 5) == (
        "'validation' counts 4 samples, but the client reports 5 validation samples")
