"""Weight perturbation: the update uses the gradient at the perturbed weights and is applied to the originals."""

import copy

import numpy as np
import pytest
import torch

from medfl.harmofl.weight_perturbation import WeightPerturbationOptimizer, perturbed_training_step

X = np.array([[1.0, 2.0], [-1.0, 0.5], [3.0, -2.0]])
T = np.array([1.0, -2.0, 0.5])
W0, B0 = np.array([0.3, -0.7]), 0.2


def mse_gradient(w: np.ndarray, b: float) -> tuple[np.ndarray, float]:
    """d/dw, d/db of mean((X w + b - T)^2), by hand."""
    residual = X @ w + b - T
    return 2 * X.T @ residual / len(T), 2 * residual.mean()


def linear_model() -> torch.nn.Linear:
    model = torch.nn.Linear(2, 1).double()
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(W0)[None])
        model.bias.fill_(B0)
    return model


def mse(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, t = batch
    return ((model(x).squeeze(1) - t) ** 2).mean()


BATCH = (torch.tensor(X), torch.tensor(T))


class RecordingSGD(torch.optim.SGD):
    """SGD that records the weights it sees when step() is called."""

    def step(self, closure=None):
        self.seen = [p.detach().clone() for group in self.param_groups for p in group["params"]]
        return super().step(closure)


def test_update_uses_gradient_at_perturbed_weights_and_restores_first():
    lr, weight_decay, rho = 0.1, 0.01, 0.05
    model = linear_model()
    opt = WeightPerturbationOptimizer(RecordingSGD(model.parameters(), lr=lr, weight_decay=weight_decay), alpha=rho)

    mse(model, BATCH).backward()
    grad_norm = opt.first_step()
    gw, gb = mse_gradient(W0, B0)
    norm = np.sqrt(np.sum(gw**2) + gb**2)  # global L2 norm over weight and bias
    w_hat, b_hat = W0 + rho * gw / norm, B0 + rho * gb / norm
    assert grad_norm.item() == pytest.approx(norm)
    np.testing.assert_allclose(model.weight.detach().numpy()[0], w_hat)
    assert model.bias.item() == pytest.approx(b_hat)
    assert all(p.grad is None for p in model.parameters())

    mse(model, BATCH).backward()
    opt.second_step()
    np.testing.assert_array_equal(opt.base_optimizer.seen[0].numpy()[0], W0)  # restored before the step
    assert opt.base_optimizer.seen[1].item() == B0
    gw_hat, gb_hat = mse_gradient(w_hat, b_hat)
    np.testing.assert_allclose(model.weight.detach().numpy()[0], W0 - lr * (gw_hat + weight_decay * W0))
    assert model.bias.item() == pytest.approx(B0 - lr * (gb_hat + weight_decay * B0))


def test_training_step_equals_the_two_passes_and_returns_the_first_loss():
    manual, stepped = linear_model(), linear_model()
    manual_opt = WeightPerturbationOptimizer(torch.optim.SGD(manual.parameters(), lr=0.1))
    step_opt = WeightPerturbationOptimizer(torch.optim.SGD(stepped.parameters(), lr=0.1))

    first_loss = mse(manual, BATCH)
    first_loss.backward()
    manual_opt.first_step()
    mse(manual, BATCH).backward()
    manual_opt.second_step()

    loss = perturbed_training_step(stepped, step_opt, mse, BATCH)
    assert loss.item() == pytest.approx(first_loss.item())
    for a, b in zip(manual.parameters(), stepped.parameters()):
        torch.testing.assert_close(a, b)


def test_zero_radius_is_the_base_optimizer():
    plain, perturbed = linear_model(), linear_model()
    plain_opt = torch.optim.Adam(plain.parameters(), lr=0.01)
    mse(plain, BATCH).backward()
    plain_opt.step()
    unperturbed = WeightPerturbationOptimizer(torch.optim.Adam(perturbed.parameters(), lr=0.01), alpha=0.0)
    perturbed_training_step(perturbed, unperturbed, mse, BATCH)
    for a, b in zip(plain.parameters(), perturbed.parameters()):
        torch.testing.assert_close(a, b)


def test_base_optimizer_state_survives_a_state_dict_round_trip():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    opt = WeightPerturbationOptimizer(torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4))
    batch = (torch.randn(16, 4), torch.randn(16))
    for _ in range(3):
        perturbed_training_step(model, opt, mse, batch)

    # A new round: a fresh model/optimizer pair restored from the saved states (as after a restart).
    saved = copy.deepcopy(opt.state_dict())
    restored_model = copy.deepcopy(model)
    restored = WeightPerturbationOptimizer(torch.optim.Adam(restored_model.parameters(), lr=1e-2, weight_decay=1e-4))
    restored.load_state_dict(saved)
    assert restored.base_optimizer.state_dict()["state"][0]["step"] == 3

    perturbed_training_step(model, opt, mse, batch)
    perturbed_training_step(restored_model, restored, mse, batch)
    for a, b in zip(model.parameters(), restored_model.parameters()):
        torch.testing.assert_close(a, b)


def test_misuse_is_reported():
    model = linear_model()
    opt = WeightPerturbationOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(RuntimeError, match="without first_step"):
        opt.second_step()
    with pytest.raises(RuntimeError, match="no parameter has a gradient"):
        opt.first_step()
    mse(model, BATCH).backward()
    opt.first_step()
    with pytest.raises(RuntimeError, match="called twice"):
        opt.first_step()
    with pytest.raises(RuntimeError, match="between first_step"):
        opt.state_dict()
    with pytest.raises(ValueError, match="alpha"):
        WeightPerturbationOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), alpha=-1.0)
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        WeightPerturbationOptimizer(model)
