"""AccumulatingLinear: torch.nn.Linear's outputs and gradients, bit for bit, its weight gradient added in place."""

import pytest
import torch

from medfl.common.accumulating_linear import AccumulatingLinear
from medfl.common.params import CHUNK_ELEMENTS

IN_FEATURES = CHUNK_ELEMENTS // 64 + 3  # blocks of 64 rows, the last one shorter
OUT_FEATURES = 150
PASSES = 3  # backward passes accumulated


def accumulated(layer_class, batch: int, bias: bool = True):
    """Output, input gradient and parameter gradients after ``PASSES`` backward passes through layer -> ReLU."""
    torch.manual_seed(0)
    layer = layer_class(IN_FEATURES, OUT_FEATURES, bias=bias)
    generator = torch.Generator().manual_seed(1)
    outputs, input_grads = [], []
    for _ in range(PASSES):
        x = torch.randn(batch, IN_FEATURES, generator=generator, requires_grad=True)
        output = torch.relu(layer(x))
        output.backward(torch.randn(output.shape, generator=generator))
        outputs.append(output.detach())
        input_grads.append(x.grad)
    return outputs, input_grads, [p.grad for p in layer.parameters()]


@pytest.mark.parametrize("batch, bias", [(1, True), (4, True), (3, False)])
def test_outputs_and_accumulated_gradients_are_linears_bit_for_bit(batch, bias):
    for got, want in zip(accumulated(AccumulatingLinear, batch, bias), accumulated(torch.nn.Linear, batch, bias)):
        assert len(got) == len(want) and all(torch.equal(g, w) for g, w in zip(got, want))


def test_a_frozen_weight_gets_no_gradient_and_the_state_dict_is_linears():
    layer = AccumulatingLinear(4, 2)
    assert list(layer.state_dict()) == list(torch.nn.Linear(4, 2).state_dict())
    layer.weight.requires_grad_(False)
    layer(torch.randn(3, 4)).sum().backward()
    assert layer.weight.grad is None and layer.bias.grad is not None
