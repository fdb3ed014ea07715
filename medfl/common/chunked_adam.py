"""torch's Adam stepping each parameter a chunk at a time: the same numbers, temporaries of a chunk, not of a layer.

torch's CPU Adam (its single-tensor path) updates the moments in place but allocates ``sqrt(exp_avg_sq) / bias
correction`` (two tensors) and, with weight decay, the decayed gradient, each the size of the parameter: 0.77 GiB
for the 103 M-weight layer of FedSM's VGG-11 selector, on top of its weights, gradients and moments. Every operation
of that path is elementwise, so running it on consecutive views of :data:`~medfl.common.params.CHUNK_ELEMENTS`
elements gives bit-identical parameters and moments. Fused Adam would avoid the temporaries too, but its arithmetic
differs in the last bit.
"""

from __future__ import annotations

from typing import Callable, List, Optional

import torch
from torch.optim.adam import adam

from .params import chunks


class ChunkedAdam(torch.optim.Adam):
    """:class:`torch.optim.Adam` (its state, its ``state_dict``, its arithmetic) whose CPU single-tensor step runs a
    chunk of each parameter at a time. Groups that torch steps otherwise (``foreach``, ``fused``, ``capturable``,
    ``differentiable`` or tensors off the CPU) go to torch's own step."""

    def _chunked(self, group: dict) -> bool:
        """Whether torch would step ``group`` with its single-tensor CPU path, the one reproduced here."""
        special = any(group[key] for key in ("foreach", "fused", "capturable", "differentiable"))
        return not special and all(p.device.type == "cpu" for p in group["params"])

    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        if not all(self._chunked(group) for group in self.param_groups):
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            for group in self.param_groups:
                self._step_group(group)
        return loss

    def _step_group(self, group: dict) -> None:
        params: List[torch.Tensor] = []
        grads: List[torch.Tensor] = []
        exp_avgs: List[torch.Tensor] = []
        exp_avg_sqs: List[torch.Tensor] = []
        max_exp_avg_sqs: List[torch.Tensor] = []
        steps: List[torch.Tensor] = []
        has_complex = self._init_group(group, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps)
        beta1, beta2 = group["betas"]
        for i, step in enumerate(steps):
            tensors = [params[i], grads[i], exp_avgs[i], exp_avg_sqs[i]]
            if group["amsgrad"]:
                tensors.append(max_exp_avg_sqs[i])
            pieces = [tensors]  # a tensor that is not contiguous (rare) is stepped whole
            if all(tensor.is_contiguous() for tensor in tensors):
                pieces = [[tensor.view(-1)[part] for tensor in tensors] for part in chunks(params[i].numel())]
            for param, grad, exp_avg, exp_avg_sq, *max_exp_avg_sq in pieces:
                adam([param], [grad], [exp_avg], [exp_avg_sq], max_exp_avg_sq, [step.clone()], foreach=False,
                     has_complex=has_complex, amsgrad=group["amsgrad"], beta1=beta1, beta2=beta2, lr=group["lr"],
                     weight_decay=group["weight_decay"], eps=group["eps"], maximize=group["maximize"],
                     decoupled_weight_decay=group["decoupled_weight_decay"])
            step += 1  # each chunk counted on its own copy of the step
