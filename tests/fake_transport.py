"""A RoundController's NVFlare side replaced, so that a real controller runs its real loop in a test.

:func:`attach` gives a controller an engine (clients, a workspace in a temporary folder holding
``config/config_train.json``) and replaces the transport: every task goes to ``answer(client, task, sent)``, whose
``FLModel`` (each client's own copy of the sent one) comes back at once through the controller's own result callback, as NVFlare would deliver it (with
``meta["client_name"]``); an answer of ``None`` is a client that never answers. Log lines and panics are recorded
in ``controller.log``; a panic does not stop anything by itself, as in NVFlare the workflow returns after it.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.fl_model import FLModel

Answer = Callable[[str, str, FLModel], Optional[FLModel]]


def attach(controller, root: Path, clients: Sequence[str], answer: Answer, train_config: dict):
    """Run ``controller`` on fake clients (see the module docstring); returns it, with ``app_dir`` set."""
    config, app = root / "config", root / "app"
    config.mkdir(parents=True, exist_ok=True)
    app.mkdir(parents=True, exist_ok=True)
    (config / "config_train.json").write_text(json.dumps(train_config))
    workspace = SimpleNamespace(get_app_config_dir=lambda job: str(config), get_app_dir=lambda job: str(app),
                                get_run_dir=lambda job: str(root))
    controller.engine = SimpleNamespace(get_workspace=lambda: workspace,
                                        get_clients=lambda: [SimpleNamespace(name=c) for c in clients])
    controller.fl_ctx = FLContext()
    controller.abort_signal = SimpleNamespace(triggered=False)
    controller.app_dir = app
    controller.log: Dict[str, List[str]] = {"info": [], "warning": [], "error": [], "panic": []}
    for level in controller.log:
        setattr(controller, level, controller.log[level].append)

    def replies(task_name: str, data: FLModel, targets: Sequence[str]) -> List[FLModel]:
        results = []
        for client in targets:
            # each client gets its own copy of the message, as NVFlare delivers it (the server empties its payload
            # dicts once the round's results are in)
            delivered = FLModel(params=dict(data.params or {}), metrics=data.metrics, current_round=data.current_round,
                                total_rounds=data.total_rounds, meta=dict(data.meta or {}))
            result = answer(client, task_name, delivered)
            if result is not None:
                result.meta = {**(result.meta or {}), "client_name": client}
                results.append(result)
        return results

    def send_model(task_name, data, targets, timeout, callback):
        for result in replies(task_name, data, targets):
            callback(result)

    controller.send_model = send_model
    controller.get_num_standing_tasks = lambda: 0
    controller.get_client_disconnect_time = lambda client_name: None
    return controller


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def all_finite(state) -> bool:
    """Every floating tensor or array in a (nested) checkpoint dict is finite."""
    if isinstance(state, dict):
        return all(all_finite(v) for v in state.values())
    if torch.is_tensor(state) and state.is_floating_point():
        return bool(torch.isfinite(state).all())
    if isinstance(state, np.ndarray) and np.issubdtype(state.dtype, np.floating):
        return bool(np.isfinite(state).all())
    return True
