"""The arithmetic a network needs and the rate the machine can do it at: FLOPs per image counted with forward
hooks, and the GFLOP/s of a large float32 matrix product on the current torch threads."""

from __future__ import annotations

import time

import torch
from torch import nn

FLOPS_PER_MAC = 2
TRAINING_PASSES = 3  # forward, and a backward pass about twice its cost (input and weight gradients)
MATMUL_SIDE = 2048
MATMUL_REPEATS = 3


def layer_macs(module: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    """Multiply-adds of one forward call of a convolution or linear layer, over the whole batch."""
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        kernel = module.weight[0].numel()  # out_channels / groups x kernel positions
        return inputs[0].numel() * kernel
    if isinstance(module, nn.modules.conv._ConvNd):
        kernel = module.weight[0].numel()  # in_channels / groups x kernel positions
        return output.numel() * kernel
    return 0


def forward_flops(model: nn.Module, example: torch.Tensor) -> float:
    """FLOPs of one forward pass per image of ``example`` (its batch; convolution and linear layers only)."""
    macs = [0]

    def count(module, inputs, output):
        macs[0] += layer_macs(module, inputs, output)

    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    handles = [layer.register_forward_hook(count) for layer in layers]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return FLOPS_PER_MAC * macs[0] / example.shape[0]


def matmul_gflops(side: int = MATMUL_SIDE, repeats: int = MATMUL_REPEATS) -> float:
    """Best GFLOP/s of ``side x side`` float32 matrix products on the current torch threads."""
    a, b = torch.randn(side, side), torch.randn(side, side)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return FLOPS_PER_MAC * side**3 / best / 1e9
