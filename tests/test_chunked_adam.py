"""ChunkedAdam: torch's Adam, bit for bit, with a chunk's temporaries."""

import pytest
import torch

from medfl.common.chunked_adam import ChunkedAdam
from medfl.common.params import CHUNK_ELEMENTS

STEPS = 3


def trained(optimizer_class, shapes, steps=STEPS, **settings):
    """Parameters and optimizer after ``steps`` steps on seeded random gradients."""
    generator = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(shape, generator=generator)) for shape in shapes]
    optimizer = optimizer_class(params, lr=1e-3, **settings)
    for _ in range(steps):
        for param in params:
            param.grad = torch.randn(param.shape, generator=generator)
        optimizer.step()
    return params, optimizer


@pytest.mark.parametrize("settings", [{}, {"weight_decay": 0.1}, {"amsgrad": True}, {"maximize": True},
                                      {"weight_decay": 0.1, "decoupled_weight_decay": True},
                                      {"foreach": True}])  # torch's own step
def test_chunked_steps_are_torchs_bit_for_bit(settings):
    shapes = [(2, CHUNK_ELEMENTS // 2 + 5), (7,), ()]  # one layer over a chunk, a small one, a scalar
    expected, reference = trained(torch.optim.Adam, shapes, **settings)
    params, optimizer = trained(ChunkedAdam, shapes, **settings)
    for param, want in zip(params, expected):
        assert torch.equal(param, want)
        state, want_state = optimizer.state[param], reference.state[want]
        assert set(state) == set(want_state)
        assert all(torch.equal(state[key], want_state[key]) for key in state), "the moments and the step"
    assert optimizer.state_dict()["param_groups"] == reference.state_dict()["param_groups"]


def test_a_non_contiguous_parameter_is_stepped_whole():
    expected, _ = trained(torch.optim.Adam, [(3, 4)])
    params, optimizer = trained(ChunkedAdam, [(3, 4)], steps=0)
    params[0].data = params[0].data.t().contiguous().t()  # the same values, column-major
    generator = torch.Generator().manual_seed(0)
    torch.randn((3, 4), generator=generator)  # the initial values' draw
    for _ in range(STEPS):
        params[0].grad = torch.randn((3, 4), generator=generator)
        optimizer.step()
    assert not params[0].is_contiguous() and torch.equal(params[0], expected[0])
