"""One training epoch and one evaluation loop, shared by every method.

Methods differ in the model, the loss and the optimizer step (SAM's two passes, DET's two models), not in the
loop. ``step`` lets a method replace the optimizer step; the default is forward, backward, ``optimizer.step()``.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, Optional

import torch
from monai.metrics import DiceMetric

from nvflare.apis.signal import Signal

from .chunked_adam import ChunkedAdam
from .data import SAMPLE_ID
from .settings import OptimizerSpec

Batch = Dict[str, torch.Tensor]
MAX_IDS_SHOWN = 16
StepFn = Callable[[torch.nn.Module, Batch, Callable, torch.optim.Optimizer], torch.Tensor]


def build_optimizer(parameters, spec: OptimizerSpec, lr: Optional[float] = None,
                    chunked: bool = False) -> torch.optim.Optimizer:
    """The torch optimizer of ``spec`` over ``parameters`` (``lr`` overrides ``spec.lr``, e.g. a decayed rate);
    ``chunked``: Adam as :class:`~medfl.common.chunked_adam.ChunkedAdam` (the same steps, temporaries of a chunk:
    for a model with layers of hundreds of MB)."""
    lr = spec.lr if lr is None else lr
    if spec.name == "adam":
        adam = ChunkedAdam if chunked else torch.optim.Adam
        return adam(parameters, lr=lr, weight_decay=spec.weight_decay)
    return torch.optim.SGD(parameters, lr=lr, momentum=spec.momentum, weight_decay=spec.weight_decay)


class TrainingAborted(RuntimeError):
    """Raised when NVFlare's abort signal fires during local work."""


def optimizer_step(model: torch.nn.Module, batch: Batch, loss_fn: Callable, optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """Plain step: ``loss = loss_fn(model(image), label)``, backward, ``optimizer.step()``."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(batch["image"]), batch["label"])
    loss.backward()
    optimizer.step()
    return loss.detach()


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def batch_ids(batch: Batch) -> str:
    """`` on the batch of <ids>`` for an error message about ``batch`` ('' when its dataset gives no ids)."""
    ids = batch.get(SAMPLE_ID) if isinstance(batch, dict) else None
    if not ids:
        return ""
    ids = [str(i) for i in ids]
    more = f" and {len(ids) - MAX_IDS_SHOWN} more" if len(ids) > MAX_IDS_SHOWN else ""
    return f" on the batch of {', '.join(ids[:MAX_IDS_SHOWN])}{more}"


def train_epoch(
    model: torch.nn.Module,
    loader: Iterable[Batch],
    loss_fn: Callable,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    step: StepFn = optimizer_step,
    abort_signal: Optional[Signal] = None,
) -> float:
    """Train ``model`` for one pass over ``loader``; return the mean loss. A non-finite loss raises
    ``FloatingPointError`` naming the batch's samples (see :func:`batch_ids`)."""
    model.train()
    total, count = 0.0, 0
    for batch in loader:
        if abort_signal is not None and abort_signal.triggered:
            raise TrainingAborted("abort signal received")
        loss = step(model, to_device(batch, device), loss_fn, optimizer)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss.item()}{batch_ids(batch)} "
                                     "(check the learning rate and the input data)")
        total += loss.item()
        count += 1
    return total / max(count, 1)


@torch.no_grad()
def predict_binary_mask(model: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    """Sigmoid-threshold prediction of a one-channel segmentation network: ``(B,1,H,W)`` in {0, 1}."""
    return (torch.sigmoid(model(image)) > 0.5).float()


@torch.no_grad()
def evaluate_dice(
    model: torch.nn.Module,
    loader: Iterable[Batch],
    device: torch.device,
    predict: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor] = predict_binary_mask,
) -> float:
    """Mean foreground Dice over all images of ``loader`` (MONAI ``DiceMetric``, empty-vs-empty counts as 1)."""
    model.eval()
    metric = DiceMetric(include_background=True, reduction="mean", ignore_empty=False)
    for batch in loader:
        batch = to_device(batch, device)
        metric(y_pred=predict(model, batch["image"]), y=batch["label"])
    return float(metric.aggregate().item())
