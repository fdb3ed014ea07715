"""A linear layer whose weight gradient is added into ``weight.grad`` a block of rows at a time.

Autograd computes a linear layer's whole weight gradient ``grad_output.T @ input`` for every backward pass and then
adds it to ``weight.grad``: when gradients accumulate over many batches (FedSM's full-batch selector epoch), that
is a second, transient gradient of the layer (0.38 GiB for the 103 M-weight layer of the VGG-11 selector, above the
weights, gradients and Adam moments the client holds). :class:`AccumulatingLinear` computes it in blocks of about
:data:`~medfl.common.params.CHUNK_ELEMENTS` and adds each block in place: every element is the same dot product
and the same addition as autograd's, so the gradients are the same numbers; the forward pass, the input's and the
bias's gradients are :class:`torch.nn.Linear`'s.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .params import CHUNK_ELEMENTS


def accumulate_weight_grad(weight: torch.Tensor, grad_output: torch.Tensor, input: torch.Tensor) -> None:
    """``weight.grad += grad_output.T @ input`` (``weight.grad = ...`` when it is ``None``) for 2-D ``grad_output``
    ``(N, out)`` and ``input`` ``(N, in)``, a block of rows of the weight at a time."""
    grad = weight.grad
    fresh = grad is None
    if fresh:
        grad = torch.empty_like(weight, memory_format=torch.contiguous_format)
    rows = max(1, CHUNK_ELEMENTS // weight.shape[1])
    for start in range(0, weight.shape[0], rows):
        block = grad_output[:, start:start + rows].t().mm(input)
        if fresh:
            grad[start:start + rows].copy_(block)
        else:
            grad[start:start + rows].add_(block)
    if fresh:
        weight.grad = grad


class _AccumulatingLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        ctx.save_for_backward(input, weight)
        ctx.has_bias = bias is not None
        return F.linear(input, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: torch.Tensor) -> Tuple[Optional[torch.Tensor], None, Optional[torch.Tensor]]:
        input, weight = ctx.saved_tensors
        grad_output = grad_output.reshape(-1, weight.shape[0])
        grad_input = grad_output.mm(weight).reshape(input.shape) if ctx.needs_input_grad[0] else None
        if ctx.needs_input_grad[1]:
            accumulate_weight_grad(weight, grad_output, input.reshape(-1, weight.shape[1]))
        grad_bias = grad_output.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_input, None, grad_bias


class AccumulatingLinear(nn.Linear):
    """:class:`torch.nn.Linear` (same parameters, initialisation and ``state_dict``) that adds its weight gradient
    into ``weight.grad`` in place, in blocks (:func:`accumulate_weight_grad`), instead of through a whole temporary
    gradient."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _AccumulatingLinearFunction.apply(input, self.weight, self.bias)
