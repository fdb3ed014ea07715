"""Checks of what a client sends back, before any of it touches a model: a site is not trusted.

A server declares, for each task it sends, what it expects back (:class:`ResultSpec`): the arrays with their
shapes and dtypes (by default, exactly the arrays it sent), the meta entries with a check each (sample counts,
FedMAS's robust factor ...) and the round. :func:`check_result` compares a reply with it and returns ``None``
or one sentence saying what is wrong, e.g. ``global/conv.weight has shape (1,) but (4, 1, 3, 3) is expected``.
Every check is pure (numbers and arrays in, a sentence out) and runs without NVFlare.

The rules:

* arrays: the expected keys, no others; each a numpy array of the expected shape and dtype (a float array must
  come back as the same float type, an integer counter as the same integer type); floats all finite. A group of
  optional arrays (FedSM's selector Adam moments, added by a client-side filter) comes back whole or not at all.
* sample counts: an ``int`` (not a float, not a bool) from 1 to ``max_client_samples`` (default
  :data:`DEFAULT_MAX_CLIENT_SAMPLES`, far above any site these jobs train on; a server with bigger sites raises
  it). A float such as ``1e9`` is refused even when integral: clients count samples with ``len``.
* metrics: real numbers inside the range :func:`metric_range` declares for their name (:data:`METRIC_RANGES`).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

from .params import chunks

DEFAULT_MAX_CLIENT_SAMPLES = 10_000_000
MAX_KEYS_LISTED = 3  # keys named in a message about missing or unexpected arrays

MetaCheck = Callable[[Any], Optional[str]]
ResultCheck = Callable[[Any], Optional[str]]


@dataclass(frozen=True)
class ArraySpec:
    """The shape and dtype an array must have."""

    shape: Tuple[int, ...]
    dtype: np.dtype

    def __str__(self) -> str:
        return f"{self.dtype} {self.shape}"


def array_specs(params: Optional[Mapping[str, np.ndarray]]) -> Dict[str, ArraySpec]:
    """``{key: ArraySpec}`` of a flat parameter dict (what a server sent)."""
    return {key: ArraySpec(tuple(np.shape(value)), np.asarray(value).dtype) for key, value in (params or {}).items()}


@dataclass(frozen=True)
class MetricRange:
    """The values a metric can take: ``low <= value <= high``; ``undefined_allowed``: NaN too, where the metric is
    undefined on some data (one-vs-rest AUC of a split with a single class)."""

    low: float
    high: float
    undefined_allowed: bool = False

    def __str__(self) -> str:
        return f"[{self.low:g}, {self.high:g}]"


SCORE = MetricRange(0.0, 1.0)
# Metric names and the values they take, in one place. A client reports ``<model>`` (the model's validation score,
# always one of the scores below in this project) and ``<model>_<metric>``; see :func:`metric_range`.
METRIC_RANGES: Dict[str, MetricRange] = {
    "dice": SCORE,
    "dice_fg": SCORE,
    "dice_bg_fg": SCORE,
    "accuracy": SCORE,
    "balanced_accuracy": SCORE,
    "macro_f1": SCORE,
    "macro_auc": MetricRange(0.0, 1.0, undefined_allowed=True),
    "auc": MetricRange(0.0, 1.0, undefined_allowed=True),
    "loss": MetricRange(0.0, math.inf),
}


def metric_range(name: str) -> MetricRange:
    """The range of metric ``name``: its own entry of :data:`METRIC_RANGES`, else that of the longest entry it ends
    with after an underscore (``personal_macro_f1`` -> ``macro_f1``, ``global_loss`` -> ``loss``), else a score in
    [0, 1] (a bare model name such as ``global`` or ``selector`` reports the model's validation score)."""
    if name in METRIC_RANGES:
        return METRIC_RANGES[name]
    suffixes = [known for known in METRIC_RANGES if name.endswith(f"_{known}")]
    return METRIC_RANGES[max(suffixes, key=len)] if suffixes else SCORE


@dataclass
class ResultSpec:
    """What a client must send back for one task.

    Attributes:
        params: every array that must come back, by flat key.
        optional_groups: ``{description: {key: ArraySpec}}``, arrays that come back all together or not at all.
        meta: ``{key: check}`` for entries that must be in the reply's meta; ``check(value)`` returns ``None`` or
            what is wrong with the value.
        current_round: the round the task was sent in; a reply must carry it (``None``: not checked).
        checks: further checks of the whole reply (entries that must agree with each other), run last.
    """

    params: Dict[str, ArraySpec] = field(default_factory=dict)
    optional_groups: Dict[str, Dict[str, ArraySpec]] = field(default_factory=dict)
    meta: Dict[str, MetaCheck] = field(default_factory=dict)
    current_round: Optional[int] = None
    checks: List[ResultCheck] = field(default_factory=list)


def _listed(keys) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - MAX_KEYS_LISTED} more" if len(keys) > MAX_KEYS_LISTED else ""
    return f"{keys[:MAX_KEYS_LISTED]}{more}"


def non_finite_problem(key: str, value: np.ndarray) -> Optional[str]:
    """``None`` if ``value`` holds no NaN or infinity (integer arrays never do), else a sentence naming ``key``."""
    if not np.issubdtype(value.dtype, np.floating):
        return None
    flat = value.reshape(-1)
    bad = value.size - sum(int(np.count_nonzero(np.isfinite(flat[part]))) for part in chunks(flat.size))
    return f"{key} holds {bad} non-finite value(s) (NaN or inf) of {value.size}" if bad else None


def check_array(key: str, value: Any, spec: ArraySpec) -> Optional[str]:
    """``None`` if ``value`` is a numpy array of ``spec``'s shape and dtype with finite values."""
    if not isinstance(value, np.ndarray):
        return f"{key} is a {type(value).__name__}, not a numpy array"
    if value.shape != spec.shape:
        return f"{key} has shape {value.shape} but {spec.shape} is expected"
    if value.dtype != spec.dtype:
        return f"{key} has dtype {value.dtype} but {spec.dtype} is expected"
    return non_finite_problem(key, value)


def check_params(params: Optional[Mapping[str, Any]], expected: Mapping[str, ArraySpec],
                 optional_groups: Optional[Mapping[str, Mapping[str, ArraySpec]]] = None) -> Optional[str]:
    """``None`` if ``params`` holds exactly the ``expected`` arrays (plus whole optional groups), each as specified."""
    params = params or {}
    optional_groups = optional_groups or {}
    allowed = dict(expected)
    for name, group in optional_groups.items():
        present = set(group) & set(params)
        if present and present != set(group):
            return f"{name}: {len(present)} of {len(group)} arrays sent, missing {_listed(set(group) - present)}"
        if present:
            allowed.update(group)
    missing, unexpected = set(expected) - set(params), set(params) - set(allowed)
    if missing:
        return f"missing array(s) {_listed(missing)}"
    if unexpected:
        return f"unexpected array(s) {_listed(unexpected)}"
    for key in sorted(params):
        problem = check_array(key, params[key], allowed[key])
        if problem:
            return problem
    return None


def _real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _shown(value: Any) -> str:
    """A value as a message shows it: numpy numbers as plain Python ones (``1000000000.0``, not ``np.float64(...)``)."""
    if _real(value):
        return repr(int(value)) if isinstance(value, (int, np.integer)) else repr(float(value))
    return repr(value)


def check_sample_count(value: Any, maximum: int = DEFAULT_MAX_CLIENT_SAMPLES) -> Optional[str]:
    """``None`` if ``value`` is an integer from 1 to ``maximum`` (see the module docstring)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        return f"is {_shown(value)} ({type(value).__name__}), not an integer count"
    if value < 1:
        return f"is {value}, not a positive count"
    if value > maximum:
        return f"is {value}, more than max_client_samples={maximum}"
    return None


def check_non_negative(value: Any) -> Optional[str]:
    """``None`` if ``value`` is a finite real number >= 0 (FedMAS's robust factor)."""
    if not _real(value) or not math.isfinite(float(value)) or value < 0:
        return f"is {_shown(value)}, not a finite number >= 0"
    return None


def check_metrics(metrics: Any) -> Optional[str]:
    """``None`` if ``metrics`` is empty or a ``{name: number}`` dict whose values lie in their :func:`metric_range`."""
    if not metrics:
        return None
    if not isinstance(metrics, Mapping):
        return f"metrics are a {type(metrics).__name__}, not a dict"
    for name, value in sorted(metrics.items(), key=lambda item: str(item[0])):
        if not isinstance(name, str):
            return f"metric name {name!r} is not a string"
        if not _real(value):
            return f"metric {name} is {_shown(value)}, not a number"
        allowed = metric_range(name)
        if math.isnan(value):
            if allowed.undefined_allowed:
                continue
            return f"metric {name} is nan"
        if not allowed.low <= value <= allowed.high or math.isinf(value):
            return f"metric {name} = {_shown(value)} is outside {allowed}"
    return None


def check_result(spec: ResultSpec, result: Any) -> Optional[str]:
    """``None`` if ``result`` (an ``FLModel``) is what ``spec`` expects, else the first problem found."""
    current_round = getattr(result, "current_round", None)
    if spec.current_round is not None and current_round != spec.current_round:
        return f"the result is for round {current_round}, but the task was sent in round {spec.current_round}"
    meta = getattr(result, "meta", None) or {}
    for key, check in spec.meta.items():
        if key not in meta:
            return f"the reply has no '{key}' in its meta"
        problem = check(meta[key])
        if problem:
            return f"{key} {problem}"
    problem = check_params(getattr(result, "params", None), spec.params, spec.optional_groups)
    problem = problem or check_metrics(getattr(result, "metrics", None))
    for check in spec.checks:
        problem = problem or check(result)
    return problem


def update_norm(params: Mapping[str, np.ndarray]) -> float:
    """L2 norm of every floating entry of ``params`` together, accumulated in float64 a chunk at a time (no float64
    copy of a whole layer; NaN or inf when any entry is not finite)."""
    total = 0.0
    for value in params.values():
        value = np.asarray(value)
        if np.issubdtype(value.dtype, np.floating):
            flat = value.reshape(-1)
            total += sum(float(np.sum(np.square(flat[part], dtype=np.float64))) for part in chunks(flat.size))
    return math.sqrt(total)
