"""HarmoFL client weight perturbation (Jiang et al., AAAI 2022; ALGORITHMS.md §1.3).

A sharpness-aware (SAM-style) local update: the gradient used by the base optimizer is taken at the
perturbed weights ``w + alpha * g / (||g|| + eps)``, where ``g`` is the gradient at ``w`` and ``||g||`` its
global L2 norm over all parameters, while the update itself is applied to the unperturbed ``w``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

DEFAULT_ALPHA = 0.05  # perturbation radius rho (``--alpha`` of the released code)
DEFAULT_EPS = 1e-12  # keeps the normalisation finite when the gradient vanishes


class WeightPerturbationOptimizer:
    """Two-pass wrapper around any torch optimizer: ``first_step()`` perturbs, ``second_step()`` updates.

    Usage per batch::

        loss_fn(model, batch).backward()   # g = grad L(w)
        opt.first_step()                   # w <- w + alpha * g / (||g||_2 + eps); grads cleared
        loss_fn(model, batch).backward()   # g' = grad L(w + delta)
        opt.second_step()                  # w restored exactly; base_optimizer.step() with g'; grads cleared

    The base optimizer keeps its own state (momentum, Adam moments), so it can live across FL rounds;
    ``state_dict()`` / ``load_state_dict()`` are the base optimizer's. Weight decay, if any, is applied by
    the base optimizer to the restored weights.

    Args:
        base_optimizer: the optimizer that performs the update (e.g. ``SGD``, ``Adam``).
        alpha: perturbation radius ``rho`` (>= 0).
        eps: added to the gradient norm.
    """

    def __init__(
        self, base_optimizer: torch.optim.Optimizer, alpha: float = DEFAULT_ALPHA, eps: float = DEFAULT_EPS
    ) -> None:
        if not isinstance(base_optimizer, torch.optim.Optimizer):
            raise TypeError(f"base_optimizer must be a torch.optim.Optimizer, got {type(base_optimizer).__name__}")
        if alpha < 0:
            raise ValueError(f"alpha (perturbation radius) must be >= 0, got {alpha}")
        self.base_optimizer = base_optimizer
        self.alpha = alpha
        self.eps = eps
        self._saved_weights: dict[torch.Tensor, torch.Tensor] = {}

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The base optimizer's parameter groups."""
        return self.base_optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients of all parameters."""
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def first_step(self) -> torch.Tensor:
        """Move every parameter with a gradient to ``w + alpha * g / (||g||_2 + eps)``; return ``||g||_2``."""
        if self._saved_weights:
            raise RuntimeError("first_step() called twice: call second_step() to restore the weights first")
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            raise RuntimeError("no parameter has a gradient: call loss.backward() before first_step()")
        device = params[0].grad.device
        grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad).to(device) for p in params]))
        scale = self.alpha / (grad_norm + self.eps)
        for p in params:
            self._saved_weights[p] = p.detach().clone()
            p.add_(p.grad * scale.to(p.device))
        self.zero_grad()
        return grad_norm

    @torch.no_grad()
    def second_step(self) -> None:
        """Restore the unperturbed weights, then step the base optimizer with the current gradients."""
        if not self._saved_weights:
            raise RuntimeError("second_step() called without first_step()")
        for p, weight in self._saved_weights.items():
            p.copy_(weight)
        self._saved_weights.clear()
        self.base_optimizer.step()
        self.zero_grad()

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state (refused between the two steps, while the weights are perturbed)."""
        if self._saved_weights:
            raise RuntimeError("state_dict() requested between first_step() and second_step()")
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load the base optimizer's state."""
        self.base_optimizer.load_state_dict(state_dict)


def perturbed_training_step(
    model: torch.nn.Module,
    optimizer: WeightPerturbationOptimizer,
    loss_closure: Callable[[torch.nn.Module, Any], torch.Tensor],
    batch: Any,
) -> torch.Tensor:
    """One HarmoFL local step (the body of the released ``train_perturbation``); returns the first-pass loss.

    Args:
        model: the network (in train mode).
        optimizer: the weight-perturbation optimizer over the model's parameters.
        loss_closure: ``loss_closure(model, batch)`` returns the scalar loss of ``model`` on ``batch``; it is
            called twice, at ``w`` and at the perturbed ``w + delta``.
        batch: whatever ``loss_closure`` expects.
    """
    optimizer.zero_grad()
    loss = loss_closure(model, batch)
    loss.backward()
    optimizer.first_step()
    loss_closure(model, batch).backward()
    optimizer.second_step()
    return loss.detach()


def weight_perturbation_step(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: WeightPerturbationOptimizer,
) -> torch.Tensor:
    """:func:`perturbed_training_step` as a ``step`` of ``medfl.common.train.train_epoch``.

    ``batch`` is ``{"image", "label"}``; the loss is ``loss_fn(model(image), label)`` at ``w`` and at ``w + delta``.
    """
    return perturbed_training_step(model, optimizer, lambda m, b: loss_fn(m(b["image"]), b["label"]), batch)
