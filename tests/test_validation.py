"""The checks of client results (medfl.common.validation), without NVFlare."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nvflare.app_common.abstract.fl_model import FLModel

from medfl.common.params import CHUNK_ELEMENTS
from medfl.common.validation import (
    DEFAULT_MAX_CLIENT_SAMPLES,
    SCORE,
    ArraySpec,
    ResultSpec,
    array_specs,
    check_metrics,
    check_non_negative,
    check_params,
    check_result,
    check_sample_count,
    metric_range,
    non_finite_problem,
    update_norm,
)

SENT = {"global/conv.weight": np.zeros((4, 1, 3, 3), np.float32), "global/bn.num_batches_tracked": np.array(3)}
SPEC = array_specs(SENT)


def honest():
    return {k: v.copy() for k, v in SENT.items()}


def with_entry(key, value):
    params = honest()
    params[key] = value
    return params


@pytest.mark.parametrize("params, problem", [
    (with_entry("global/conv.weight", np.full((4, 1, 3, 3), np.nan, np.float32)),
     "global/conv.weight holds 36 non-finite value(s) (NaN or inf) of 36"),
    (with_entry("global/conv.weight", np.where(np.arange(36).reshape(4, 1, 3, 3) == 5, np.inf, 0).astype(np.float32)),
     "global/conv.weight holds 1 non-finite value(s) (NaN or inf) of 36"),
    (with_entry("global/conv.weight", np.zeros(1, np.float32)),  # numpy would broadcast it into the mean
     "global/conv.weight has shape (1,) but (4, 1, 3, 3) is expected"),
    (with_entry("global/conv.weight", np.zeros((4, 1, 3, 3), np.int64)),
     "global/conv.weight has dtype int64 but float32 is expected"),
    (with_entry("global/conv.weight", np.zeros((4, 1, 3, 3), np.float64)),
     "global/conv.weight has dtype float64 but float32 is expected"),
    (with_entry("global/conv.weight", [[0.0]]), "global/conv.weight is a list, not a numpy array"),
    (with_entry("global/extra", np.zeros(1, np.float32)), "unexpected array(s) ['global/extra']"),
    ({"global/conv.weight": SENT["global/conv.weight"]}, "missing array(s) ['global/bn.num_batches_tracked']"),
    ({}, "missing array(s) ['global/bn.num_batches_tracked', 'global/conv.weight']"),
])
def test_arrays_must_be_what_was_sent(params, problem):
    assert check_params(params, SPEC) == problem


def test_what_was_sent_passes_and_long_key_lists_are_cut():
    assert check_params(honest(), SPEC) is None
    many = {f"k{i}": ArraySpec((1,), np.dtype(np.float32)) for i in range(5)}
    assert check_params({}, many) == "missing array(s) ['k0', 'k1', 'k2'] and 2 more"


def test_an_optional_group_comes_back_whole_or_not_at_all():
    group = {"m/a": ArraySpec((2,), np.dtype(np.float32)), "m/b": ArraySpec((), np.dtype(np.float32))}
    assert check_params(honest(), SPEC, {"moments": group}) is None
    whole = {**honest(), "m/a": np.zeros(2, np.float32), "m/b": np.array(1.0, np.float32)}
    assert check_params(whole, SPEC, {"moments": group}) is None
    part = {**honest(), "m/a": np.zeros(2, np.float32)}
    assert check_params(part, SPEC, {"moments": group}) == "moments: 1 of 2 arrays sent, missing ['m/b']"
    nan = {**whole, "m/b": np.array(np.nan, np.float32)}
    assert check_params(nan, SPEC, {"moments": group}) == "m/b holds 1 non-finite value(s) (NaN or inf) of 1"


@pytest.mark.parametrize("value, problem", [
    (1e9, "is 1000000000.0 (float), not an integer count"),
    (10.0, "is 10.0 (float), not an integer count"),
    (math.nan, "is nan (float), not an integer count"),
    (-30, "is -30, not a positive count"),
    (0, "is 0, not a positive count"),
    (True, "is True (bool), not an integer count"),
    ("10", "is '10' (str), not an integer count"),
    (None, "is None (NoneType), not an integer count"),
    (DEFAULT_MAX_CLIENT_SAMPLES + 1, f"is {DEFAULT_MAX_CLIENT_SAMPLES + 1}, more than max_client_samples="
                                     f"{DEFAULT_MAX_CLIENT_SAMPLES}"),
])
def test_sample_counts_are_positive_integers_up_to_the_maximum(value, problem):
    assert check_sample_count(value) == problem


def test_valid_sample_counts():
    assert check_sample_count(1) is None and check_sample_count(np.int64(500)) is None
    assert check_sample_count(DEFAULT_MAX_CLIENT_SAMPLES) is None
    assert check_sample_count(11, maximum=10) == "is 11, more than max_client_samples=10"


def test_metric_ranges_are_declared_by_name():
    assert metric_range("global") == SCORE and metric_range("selector") == SCORE
    assert metric_range("personal_balanced_accuracy") == metric_range("balanced_accuracy") == SCORE
    assert metric_range("global_loss").high == math.inf and metric_range("global_loss").low == 0
    assert metric_range("deputy_macro_auc").undefined_allowed and not metric_range("deputy_macro_f1").undefined_allowed


@pytest.mark.parametrize("metrics, problem", [
    ({"global": 1e9}, "metric global = 1000000000.0 is outside [0, 1]"),
    ({"global": math.nan}, "metric global is nan"),
    ({"global": -0.1}, "metric global = -0.1 is outside [0, 1]"),
    ({"personal_macro_f1": 1.5}, "metric personal_macro_f1 = 1.5 is outside [0, 1]"),
    ({"global_loss": -1.0}, "metric global_loss = -1.0 is outside [0, inf]"),
    ({"global_loss": math.inf}, "metric global_loss = inf is outside [0, inf]"),
    ({"global_macro_auc": math.inf}, "metric global_macro_auc = inf is outside [0, 1]"),
    ({"global": "0.5"}, "metric global is '0.5', not a number"),
    ({"global": True}, "metric global is True, not a number"),
    ({3: 0.5}, "metric name 3 is not a string"),
    ([0.5], "metrics are a list, not a dict"),
])
def test_metrics_out_of_range_are_refused(metrics, problem):
    assert check_metrics(metrics) == problem


def test_metrics_in_range_pass_and_an_undefined_auc_is_allowed():
    assert check_metrics({"global": 0.0, "dice_fg": 1.0, "global_loss": 12.5, "global_macro_auc": math.nan}) is None
    assert check_metrics({}) is None and check_metrics(None) is None
    assert check_metrics({"global": np.float32(0.25)}) is None


@pytest.mark.parametrize("value", [math.nan, -0.1, math.inf, "0.2", None])
def test_a_robust_factor_is_a_finite_number_at_least_zero(value):
    assert check_non_negative(value).endswith("not a finite number >= 0")


def test_check_result_checks_round_meta_arrays_metrics_and_the_method_checks_in_turn():
    spec = ResultSpec(params=SPEC, meta={"n": check_sample_count}, current_round=3)
    good = FLModel(params=honest(), metrics={"global": 0.5}, meta={"n": 4}, current_round=3)
    assert check_result(spec, good) is None
    assert check_result(spec, FLModel(params=honest(), meta={"n": 4}, current_round=2)) == \
        "the result is for round 2, but the task was sent in round 3"
    assert check_result(spec, FLModel(params=honest(), meta={}, current_round=3)) == "the reply has no 'n' in its meta"
    assert check_result(spec, FLModel(params=honest(), meta={"n": -30}, current_round=3)) == \
        "n is -30, not a positive count"
    assert check_result(spec, FLModel(params=honest(), metrics={"global": 2.0}, meta={"n": 4}, current_round=3)) == \
        "metric global = 2.0 is outside [0, 1]"
    spec.checks.append(lambda result: "the counts disagree")
    assert check_result(spec, good) == "the counts disagree"
    assert check_result(ResultSpec(), FLModel(params=None, metrics={"global": 0.5})) is None


def test_update_norm_is_non_finite_exactly_when_an_entry_is():
    params = {"w": np.full(4, 3.0, np.float32), "n": np.array(7)}
    assert update_norm(params) == pytest.approx(6.0)
    assert math.isnan(update_norm({**params, "b": np.array([np.nan], np.float32)}))
    assert math.isinf(update_norm({**params, "b": np.array([np.inf], np.float32)}))
    assert math.isfinite(update_norm({"w": np.full(4, 3e38, np.float32)}))  # float64 sums do not overflow


def test_a_layer_larger_than_a_chunk_is_checked_whole():
    """The norm and the non-finite count go through a large layer a chunk at a time: every chunk counts."""
    layer = np.full((2, CHUNK_ELEMENTS // 2 + 3), 0.5, np.float32)
    assert update_norm({"w": layer}) == pytest.approx(0.5 * math.sqrt(layer.size))
    layer[-1, -1] = layer[0, 0] = np.inf
    assert math.isinf(update_norm({"w": layer}))
    assert non_finite_problem("w", layer) == f"w holds 2 non-finite value(s) (NaN or inf) of {layer.size}"
