"""Adam-moment synchronisation for the FedSM selector, as a pair of NVFlare DXO filters.

Each client trains the selector on a single label (its own site), an extreme label imbalance; FedSM therefore
averages the selector's Adam moments ``exp_avg`` and ``exp_avg_sq`` across clients together with its weights
(the original's ``select_exp_avg`` / ``select_exp_avg_sq``; Adam's ``step`` counter stays on each client, as in the
original). Here this is a client-side filter pair, so removing the two filters from ``config_fed_client.json``
turns the sync off and changes nothing else:

* :class:`AdamMomentsSender` (``task_result_filters``) adds the selector's moments to the update under
  ``selector_adam/<param>.<moment>``; the server averages them like the weights and sends them back.
* :class:`AdamMomentsReceiver` (``task_data_filters``) takes the averaged moments out of the task data and
  hands them to the executor through the task's FLContext; they become its optimizer's state (no copy) before
  the next local step.

The executor publishes its selector and optimizer under :data:`SELECTOR_STATE_PROP` while a task runs. The
moments travel as views of the optimizer's CPU state (no copy: 1 GB for the VGG-11 selector); the server has
them before the client trains again.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple

import numpy as np
import torch

from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.dxo_filter import DXOFilter
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

from medfl.common.params import SEP, Params, adopt_array
from medfl.common.validation import ArraySpec

from .protocol import MOMENTS_NAME

SELECTOR_STATE_PROP = "medfl.fedsm.selector_state"
SYNCED_MOMENTS_PROP = "medfl.fedsm.synced_moments"
MOMENTS_SENT_PROP = "medfl.fedsm.moments_sent"  # set by the sender: the executor may release its moments
MOMENT_KEYS = ("exp_avg", "exp_avg_sq")  # the original's select_exp_avg, select_exp_avg_sq; not "step"


def adam_moments(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Params:
    """``{"<param>.exp_avg": ..., "<param>.exp_avg_sq": ...}`` for every trained parameter (views of the CPU state)."""
    moments = {}
    for name, param in model.named_parameters():
        state = optimizer.state.get(param)
        if state:
            for key in MOMENT_KEYS:
                moments[f"{name}.{key}"] = state[key].detach().cpu().numpy()
    return moments


def moment_specs(parameters: Mapping[str, ArraySpec]) -> Dict[str, ArraySpec]:
    """What :func:`adam_moments` gives for a model with these trained ``parameters`` (name -> shape and dtype):
    each moment shaped as its parameter."""
    return {f"{name}.{key}": spec for name, spec in parameters.items() for key in MOMENT_KEYS}


def load_adam_moments(model: torch.nn.Module, optimizer: torch.optim.Optimizer, moments: Params) -> int:
    """Make ``moments`` (from :func:`adam_moments`) the optimizer's state; return the parameters updated. As the
    original, only parameters the optimizer already holds state for (it has stepped) take them, and each keeps its
    own ``step``. A received array becomes the state's storage without a copy (:func:`adopt_array`), so the client
    never holds its old moments and the received ones at once (1 GB each for VGG-11); the caller keeps no other use
    of ``moments``."""
    loaded = 0
    for name, param in model.named_parameters():
        state = optimizer.state.get(param)
        if not state or f"{name}.{MOMENT_KEYS[0]}" not in moments:
            continue
        for key in MOMENT_KEYS:
            received = np.asarray(moments[f"{name}.{key}"])
            if received.shape != tuple(param.shape):
                raise ValueError(f"the Adam moment {name}.{key} has shape {received.shape}, the parameter's is "
                                 f"{tuple(param.shape)}")
            state[key] = adopt_array(received, param.device, param.dtype)
        loaded += 1
    return loaded


def release_adam_moments(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Give each parameter's ``exp_avg`` / ``exp_avg_sq`` an empty tensor once they were sent: the server averages
    them and sends them back with the next training task, so the client does not hold its old moments while it
    receives the new ones (1 GB each for VGG-11). ``step`` stays. :func:`zero_released_moments` restores a shape
    when no moments come back."""
    for param in model.parameters():
        state = optimizer.state.get(param)
        if state:
            for key in MOMENT_KEYS:
                state[key] = torch.empty(0, dtype=param.dtype, device=param.device)


def zero_released_moments(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Zero moments, shaped as their parameters, for every moment :func:`release_adam_moments` emptied; return how
    many parameters had them (when the server sends no averaged moments back, e.g. another site sent none)."""
    restored = 0
    for param in model.parameters():
        state = optimizer.state.get(param)
        if state and state[MOMENT_KEYS[0]].numel() != param.numel():
            for key in MOMENT_KEYS:
                state[key] = torch.zeros_like(param, memory_format=torch.preserve_format)
            restored += 1
    return restored


class AdamMomentsSender(DXOFilter):
    """Result filter: append the selector's Adam moments to the client's update (FedSM moment sync, out)."""

    def __init__(self):
        super().__init__(supported_data_kinds=[DataKind.WEIGHTS], data_kinds_to_filter=[DataKind.WEIGHTS])

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> Optional[DXO]:
        state: Optional[Tuple[torch.nn.Module, torch.optim.Optimizer]] = fl_ctx.get_prop(SELECTOR_STATE_PROP)
        if state is None:
            self.log_warning(fl_ctx, "no selector optimizer published by the executor; moments not sent")
            return None
        moments = adam_moments(*state)
        dxo.data.update({f"{MOMENTS_NAME}{SEP}{k}": v for k, v in moments.items()})
        fl_ctx.set_prop(MOMENTS_SENT_PROP, bool(moments), private=True, sticky=False)
        self.log_debug(fl_ctx, f"attached {len(moments)} selector Adam moment arrays")
        return dxo


class AdamMomentsReceiver(DXOFilter):
    """Task-data filter: move the server's averaged selector moments into the FLContext (moment sync, in)."""

    def __init__(self):
        super().__init__(supported_data_kinds=[DataKind.WEIGHTS], data_kinds_to_filter=[DataKind.WEIGHTS])

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> Optional[DXO]:
        prefix = f"{MOMENTS_NAME}{SEP}"
        keys = [k for k in dxo.data if k.startswith(prefix)]
        if not keys:
            return None
        fl_ctx.set_prop(SYNCED_MOMENTS_PROP, {k[len(prefix):]: dxo.data.pop(k) for k in keys}, private=True, sticky=False)
        return dxo
