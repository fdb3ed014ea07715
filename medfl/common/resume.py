"""Reading a server state file (``resume_from``) with a clear error for every way it can be wrong.

:meth:`~medfl.common.controller.RoundController.save_state` writes ``{"completed_round", "num_rounds", "models",
"best_scores", "extra", "run_id", "train_rounds"}`` with tensors for arrays. Before round 0 of a resumed run the file
must be there, load as a weights-only torch file, hold those entries (a file of a medfl before exact resume lacks the
last two), come from a run of the same length, and hold the job's models with the keys, shapes and dtypes the job
builds; otherwise :class:`~medfl.common.errors.DataError` says which.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Mapping

import torch

from .client_state import RUN_ID_PATTERN
from .errors import DataError
from .io import MAX_REASON_CHARS, load_torch_file
from .params import Params
from .validation import array_specs, check_params

STATE_KEYS = ("completed_round", "num_rounds", "models", "best_scores", "extra")


def as_numpy(obj: Any) -> Any:
    """Tensors (nested in dicts) as numpy arrays, the inverse of what ``save_state`` stores."""
    if isinstance(obj, dict):
        return {k: as_numpy(v) for k, v in obj.items()}
    return obj.numpy() if torch.is_tensor(obj) else obj


def read_server_state(path: str, num_rounds: int, models: Mapping[str, Params]) -> Dict[str, Any]:
    """The state saved in ``path``, checked against this job (``num_rounds``, its freshly built ``models``).

    Raises :class:`DataError` (``[server] <path>: <problem>``) when the file is missing, not a torch file
    (truncated, another format), lacks entries, was written by a run with another number of rounds, or holds
    other models than this job's (names, keys, shapes, dtypes; non-finite values).
    """
    def error(problem: str) -> DataError:
        return DataError(problem, path=path, site="server")

    if not os.path.isfile(path):
        raise error("state file not found" if not os.path.exists(path) else "not a file")
    try:
        state = load_torch_file(path)
    except ValueError as e:
        raise error(f"not a readable torch state file ({e})") from None
    if not isinstance(state, dict):
        raise error(f"holds a {type(state).__name__}, not a server state (written by save_state?)")
    missing = [key for key in STATE_KEYS if key not in state]
    if missing:
        raise error(f"not a server state: missing {missing} (a server_state.pt of this job is expected, "
                    f"not a model checkpoint)")
    state = as_numpy(state)
    if state["num_rounds"] != num_rounds:
        raise error(f"written by a run of num_rounds={state['num_rounds']}, but this job has num_rounds={num_rounds}; "
                    f"resume with the same num_rounds")
    completed = state["completed_round"]
    if isinstance(completed, bool) or not isinstance(completed, int) or not 0 <= completed < num_rounds:
        raise error(f"completed_round is {completed!r}, not a round of 0..{num_rounds - 1}")
    saved = state["models"]
    if not isinstance(saved, dict) or set(saved) != set(models):
        names = sorted(saved) if isinstance(saved, dict) else type(saved).__name__
        raise error(f"holds the models {names}, but this job has {sorted(models)}")
    for name in sorted(models):
        problem = check_params(saved[name], array_specs(models[name]))
        if problem:
            raise error(f"model '{name}' does not fit this job's network: {problem}")
    if not isinstance(state["best_scores"], dict) or not isinstance(state["extra"], dict):
        raise error("best_scores and extra must be dicts")
    problem = run_problem(state)
    if problem:
        raise error(problem)
    return state


def run_problem(state: Mapping[str, Any]) -> str:
    """What is wrong with a state's ``run_id`` and ``train_rounds`` (both absent: nothing), or ''."""
    if "run_id" not in state and "train_rounds" not in state:
        return ""
    run_id, rounds = state.get("run_id"), state.get("train_rounds")
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.fullmatch(run_id):
        return f"run_id is {run_id!r}, not 32 hex digits"
    last = state["completed_round"]
    if not isinstance(rounds, dict) or not all(
            isinstance(c, str) and type(r) is int and 0 <= r <= last for c, r in rounds.items()):
        return f"train_rounds must map client names to rounds of 0..{last}, got {rounds!r}"[:MAX_REASON_CHARS]
    return ""
