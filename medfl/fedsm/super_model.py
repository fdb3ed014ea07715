"""FedSM's super model at inference: the selector routes each image to a personalised model or the global one."""

from __future__ import annotations

from typing import Sequence

import torch

from medfl.common.train import predict_binary_mask

GLOBAL = -1


@torch.no_grad()
def route(selector_logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """Per image ``(B,)``: the selected site label when its softmax probability is strictly greater than
    ``threshold`` (the original's ``max_score > select_threshold``), else :data:`GLOBAL`. A threshold of 1 or more
    always selects the global model."""
    prob, label = torch.softmax(selector_logits, dim=1).max(dim=1)
    return torch.where(prob > threshold, label, torch.full_like(label, GLOBAL))


@torch.no_grad()
def super_model_predict(
    image: torch.Tensor,
    selector: torch.nn.Module,
    global_model: torch.nn.Module,
    personal_models: Sequence[torch.nn.Module],
    threshold: float = 0.9,
) -> torch.Tensor:
    """Binary masks ``(B,1,H,W)`` for images ``(B,C,H,W)``: each image is segmented by the personalised model
    of the site the selector picks (``personal_models[label]``) or, at or below ``threshold``, by the global model."""
    routes = route(selector(image), threshold)
    masks = torch.empty((image.shape[0], 1, *image.shape[2:]), device=image.device)
    for label in routes.unique().tolist():
        chosen = routes == label
        model = global_model if label == GLOBAL else personal_models[label]
        masks[chosen] = predict_binary_mask(model, image[chosen])
    return masks
