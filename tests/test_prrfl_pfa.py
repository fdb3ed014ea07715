"""Progressive Fourier Aggregation: schedule, box, per-layer PFA against a numpy reference, state dicts."""

import numpy as np
import pytest
import torch
from torch import nn

from medfl.prrfl.pfa import (
    batchnorm_keys,
    is_bn_key_name,
    low_frequency_box,
    pfa_aggregate_state_dicts,
    pfa_ratio,
    progressive_fourier_aggregate,
)

# conv (N, C, D1, D2) and linear (out, in) shapes, with odd and even matrix sides
LAYER_SHAPES = [(4, 3, 3, 3), (5, 3, 3, 3), (4, 2, 2, 2), (3, 64), (7, 5), (8, 6)]


def reference_avg_freq(weights: list[np.ndarray], ratio: float, num_clients_divisor: int) -> list[np.ndarray]:
    """Direct numpy transcription of the original ``avg_freq`` (including its fixed divisor)."""
    is_conv = weights[0].ndim == 4
    if is_conv:
        n, c, d1, d2 = weights[0].shape
        mats = [w.transpose(1, 2, 3, 0).reshape(c * d1, d2 * n) for w in weights]
    else:
        mats = list(weights)
    mats = [m.astype(np.float64) for m in mats]
    mean_low = np.zeros(mats[0].shape)
    for m in mats:
        mean_low += np.fft.fftshift(np.abs(np.fft.fft2(m)))
    mean_low = mean_low / num_clients_divisor
    out = []
    for m in mats:
        spectrum = np.fft.fft2(m)
        low = np.fft.fftshift(np.abs(spectrum))
        h, w = low.shape
        bh, bw = int(np.floor(h * ratio / 2)), int(np.floor(w * ratio / 2))
        ch, cw = int(np.floor(h / 2)), int(np.floor(w / 2))
        low[ch - bh : ch + bh, cw - bw : cw + bw] = mean_low[ch - bh : ch + bh, cw - bw : cw + bw]
        back = np.real(np.fft.ifft2(np.fft.ifftshift(low) * np.exp(1j * np.angle(spectrum))))
        out.append(back.reshape(c, d1, d2, n).transpose(3, 0, 1, 2) if is_conv else back)
    return out


def as_matrix(weight: torch.Tensor) -> torch.Tensor:
    """The layer matrix PFA transforms, in float64: conv (N, C, D1, D2) -> (C*D1, D2*N), linear as is."""
    if weight.dim() == 4:
        n, c, d1, d2 = weight.shape
        weight = weight.permute(1, 2, 3, 0).reshape(c * d1, d2 * n)
    return weight.double()


def random_weights(shape, num_clients: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator) for _ in range(num_clients)]


def test_pfa_ratio_follows_original_schedule():
    assert pfa_ratio(0, 50) == pytest.approx(0.7)
    assert pfa_ratio(49, 50) == pytest.approx(0.945)
    assert pfa_ratio(25, 50, start=0.5, end=1.0) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="total_rounds"):
        pfa_ratio(0, 0)
    with pytest.raises(ValueError, match="current_round"):
        pfa_ratio(51, 50)


def test_low_frequency_box_matches_documented_example():
    # layer5 conv of the slim VGG: 256*3 x 3*256 = 768 x 768, a 536^2 box at L=0.7 and 724^2 at L=0.945
    rows, cols = low_frequency_box(768, 768, 0.7)
    assert rows.stop - rows.start == 536 and cols.stop - cols.start == 536
    rows, _ = low_frequency_box(768, 768, pfa_ratio(49, 50))
    assert rows.stop - rows.start == 724
    with pytest.raises(ValueError, match="ratio"):
        low_frequency_box(4, 4, 1.5)


@pytest.mark.parametrize("shape", LAYER_SHAPES)
def test_ratio_zero_changes_nothing(shape):
    weights = random_weights(shape, 3)
    for original, aggregated in zip(weights, progressive_fourier_aggregate(weights, 0.0)):
        torch.testing.assert_close(aggregated, original, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("shape", [(4, 3, 2, 2), (6, 8), (4, 2, 4, 2)])
def test_full_box_with_identical_phases_is_amplitude_averaging(shape):
    """Clients sharing one phase per frequency: full-box PFA gives all of them the plain weight average."""
    base = torch.randn(shape, dtype=torch.float64)
    base_matrix = as_matrix(base)
    spectrum = torch.fft.fft2(base_matrix)
    clients = []
    for k in range(3):
        # |FFT(real)| is an even, non-negative function: multiplying by it keeps the result real, phase unchanged
        gain = 1.0 + torch.fft.fft2(torch.randn(base_matrix.shape, dtype=torch.float64)).abs() * (k + 1)
        matrix = torch.fft.ifft2(spectrum * gain).real
        if len(shape) == 4:
            n, c, d1, d2 = shape
            matrix = matrix.reshape(c, d1, d2, n).permute(3, 0, 1, 2)
        clients.append(matrix.contiguous())
    expected = sum(clients) / len(clients)
    for aggregated in progressive_fourier_aggregate(clients, 1.0):
        torch.testing.assert_close(aggregated, expected)


@pytest.mark.parametrize("shape", LAYER_SHAPES)
@pytest.mark.parametrize("ratio", [0.3, 0.7, 1.0])
def test_each_client_keeps_its_own_phase(shape, ratio):
    weights = random_weights(shape, 4, seed=1)
    for original, aggregated in zip(weights, progressive_fourier_aggregate(weights, ratio)):
        before, after = torch.fft.fft2(as_matrix(original)), torch.fft.fft2(as_matrix(aggregated))
        significant = before.abs() > 1e-6
        rotation = (after / after.abs().clamp_min(1e-12)) * (before.conj() / before.abs().clamp_min(1e-12))
        torch.testing.assert_close(rotation[significant], torch.ones_like(rotation[significant]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("num_clients", [2, 3, 5])
@pytest.mark.parametrize("shape", LAYER_SHAPES)
def test_k_agnostic_against_reference(num_clients, shape):
    weights = random_weights(shape, num_clients, seed=num_clients)
    expected = reference_avg_freq([w.numpy() for w in weights], 0.7, num_clients)
    for exp, got in zip(expected, progressive_fourier_aggregate(weights, 0.7)):
        assert got.shape == weights[0].shape and got.dtype == torch.float32
        np.testing.assert_allclose(got.numpy(), exp, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", LAYER_SHAPES + [(32, 3, 3, 3), (64, 256)])
@pytest.mark.parametrize("ratio", [0.7, 0.82, 0.945])
def test_equals_original_avg_freq_for_four_clients(shape, ratio):
    weights = random_weights(shape, 4, seed=7)
    copies = [w.clone() for w in weights]
    expected = reference_avg_freq([w.numpy() for w in weights], ratio, 4)
    got = progressive_fourier_aggregate(weights, ratio)
    for exp, out in zip(expected, got):
        np.testing.assert_allclose(out.numpy(), exp, atol=1e-5, rtol=1e-5)
    for before, after in zip(copies, weights):
        assert torch.equal(before, after)  # inputs untouched (the original overwrote its list)
    assert not torch.allclose(got[0], got[1])  # personalised: a different tensor per client


def test_client_weights_and_dtype():
    weights = [w.double() for w in random_weights((6, 4), 3, seed=3)]
    only_first = progressive_fourier_aggregate(weights, 1.0, weights_k=[2.0, 0.0, 0.0])
    # full box, amplitude of client 0 everywhere, own phase: client 0 is unchanged
    torch.testing.assert_close(only_first[0], weights[0])
    assert all(out.dtype == torch.float64 for out in only_first)
    with pytest.raises(ValueError, match="3 clients"):
        progressive_fourier_aggregate(weights, 0.5, weights_k=[1.0, 1.0])


def test_rejects_bad_inputs():
    with pytest.raises(ValueError, match="1-D"):
        progressive_fourier_aggregate([torch.zeros(5), torch.zeros(5)], 0.5)
    with pytest.raises(ValueError, match="client 1"):
        progressive_fourier_aggregate([torch.zeros(3, 4), torch.zeros(4, 3)], 0.5)
    with pytest.raises(ValueError, match="at least one"):
        progressive_fourier_aggregate([], 0.5)


class TinyNet(nn.Module):
    """Conv with bias + BN + linear with bias: every dispatch branch of the state-dict PFA."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4))
        self.head = nn.Linear(4, 3, bias=True)


def perturbed_state_dicts(num_clients: int) -> list[dict[str, torch.Tensor]]:
    states = []
    for k in range(num_clients):
        torch.manual_seed(k)
        model = TinyNet()
        model.features[1].running_mean.uniform_()
        model.features[1].num_batches_tracked.fill_(k)
        states.append(model.state_dict())
    return states


@pytest.mark.parametrize("num_clients", [2, 3, 5])
def test_state_dicts_dispatch_by_module_type_and_rank(num_clients):
    states = perturbed_state_dicts(num_clients)
    bn_keys = batchnorm_keys(TinyNet())
    assert bn_keys == {f"features.1.{n}" for n in ("weight", "bias", "running_mean", "running_var",
                                                   "num_batches_tracked")}
    outputs = pfa_aggregate_state_dicts(states, 0.7, is_bn_key=bn_keys.__contains__)
    for state, out in zip(states, outputs):
        assert out.keys() == state.keys()
        for key in bn_keys:
            assert out[key] is state[key]  # BN parameters and statistics stay local, untouched
    for key in ("features.0.bias", "head.bias"):
        mean = sum(state[key] for state in states) / num_clients
        for out in outputs:
            torch.testing.assert_close(out[key], mean)  # plain equal-weight average for every client
    for key in ("features.0.weight", "head.weight"):
        expected = progressive_fourier_aggregate([state[key] for state in states], 0.7)
        for exp, out in zip(expected, outputs):
            torch.testing.assert_close(out[key], exp)


def test_state_dicts_with_network_naming_and_key_mismatch():
    from medfl.federations.dermoscopy.networks import VGG16Slim

    model = VGG16Slim()
    assert {key for key in model.state_dict() if is_bn_key_name(key)} == batchnorm_keys(model)
    states = perturbed_state_dicts(2)
    del states[1]["head.bias"]
    with pytest.raises(ValueError, match=r"client 1 .*missing \['head.bias'\]"):
        pfa_aggregate_state_dicts(states, 0.7)
