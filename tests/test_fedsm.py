"""FedSM parts: SoftPull, the Adam-moment filter pair, the full-batch selector, the VGG-11 selector, super-model
routing, per-client bundles and the server's result check and weights."""

import copy
import json

import numpy as np
import pytest
import torch
from conftest import PROSTATE_CLIENTS, PROSTATE_TRAIN, SMALL_SELECTOR
from helpers import PROJECT_ROOT, configure
from torch.utils.data import DataLoader

from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.fl_context import FLContext
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.fl_model import FLModel

from medfl.common.errors import DataError
from medfl.common.networks import build_network
from medfl.common.params import bundle, unbundle, weighted_mean
from medfl.common.protocol import NUM_TRAIN_SAMPLES, NUM_TRAIN_STEPS, NUM_VAL_SAMPLES
from medfl.common.validation import check_result
from medfl.fedsm.controller import FedSMController, personal_name
from medfl.fedsm.executor import FedSMExecutor
from medfl.fedsm.moments import (
    MOMENT_KEYS,
    SELECTOR_STATE_PROP,
    SYNCED_MOMENTS_PROP,
    AdamMomentsReceiver,
    AdamMomentsSender,
    adam_moments,
    load_adam_moments,
    moment_specs,
    release_adam_moments,
    zero_released_moments,
)
from medfl.fedsm.networks import VGG11Selector, build_selector_cnn
from medfl.fedsm.protocol import MOMENTS_NAME, SITE_LABEL
from medfl.fedsm.softpull import soft_pull
from medfl.fedsm.super_model import GLOBAL, route, super_model_predict

# VGG-11 cfg A, one input channel, 3 classes: 8 convs (3x3, with bias) and the 25088-4096-4096-3 classifier
VGG11_PARAMETERS = (
    (1 * 64 + 64 * 128 + 128 * 256 + 256 * 256 + 256 * 512 + 3 * 512 * 512) * 9 + (64 + 128 + 2 * 256 + 4 * 512)
    + 25088 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 3 + 3
)
TINY_UNET = {"name": "unet", "args": {"channels": [4, 8], "strides": [2], "num_res_units": 0}}


@pytest.mark.parametrize("n", [2, 3, 5])
def test_soft_pull_matches_formula(n):
    rng = np.random.default_rng(n)
    personal = {f"c{k}": {"w": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=2)} for k in range(n)}
    lam = 0.7
    pulled = soft_pull(personal, lam)
    for k, client in enumerate(personal):
        for key in ("w", "b"):
            others = sum(personal[c][key].astype(np.float64) for c in personal if c != client)
            expected = lam * personal[client][key] + (1 - lam) / (n - 1) * others
            np.testing.assert_allclose(pulled[client][key], expected, rtol=1e-6)
            assert pulled[client][key].dtype == personal[client][key].dtype
    with pytest.raises(ValueError):
        soft_pull(personal, 1.5)


def test_soft_pull_one_client_and_integer_buffers():
    """One client: unchanged (a documented departure: the original multiplies it by lambda). Integer buffers are
    rounded back to their dtype (the original leaves floats, which loading truncates)."""
    assert soft_pull({"only": {"w": np.ones(2)}}, 0.7)["only"]["w"].tolist() == [1.0, 1.0]
    pulled = soft_pull({"a": {"n": np.array(10)}, "b": {"n": np.array(13)}}, 0.7)
    assert pulled["a"]["n"].dtype == np.int64 and int(pulled["a"]["n"]) == 11  # 0.7*10 + 0.3*13 = 10.9
    assert int(pulled["b"]["n"]) == 12  # 0.7*13 + 0.3*10 = 12.1


def test_soft_pull_refuses_a_missing_or_reshaped_variable_naming_client_and_variable():
    good = {"w": np.zeros((2, 2), np.float32), "b": np.zeros(2, np.float32)}
    with pytest.raises(DataError, match=r"^\[client_b\] personalised model lacks the variable 'w'"):
        soft_pull({"client_a": good, "client_b": {"b": good["b"]}, "client_c": dict(good)})
    with pytest.raises(DataError, match=r"^\[client_c\] personalised model has an unknown variable 'x'"):
        soft_pull({"client_a": good, "client_b": dict(good), "client_c": {**good, "x": np.zeros(1)}})
    with pytest.raises(DataError, match=r"^\[client_b\] personalised model variable 'w' has shape \(4,\), "
                                        r"client_a's has \(2, 2\)"):
        soft_pull({"client_a": good, "client_b": {**good, "w": np.zeros(4, np.float32)}})


def _stepped_selector(seed, label, steps=2):
    torch.manual_seed(seed)
    selector = build_selector_cnn(in_channels=1, num_classes=3, channels=(4, 8))
    optimizer = torch.optim.Adam(selector.parameters(), lr=1e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        logits = selector(torch.rand(4, 1, 16, 16))
        torch.nn.functional.cross_entropy(logits, torch.full((4,), label)).backward()
        optimizer.step()
    return selector, optimizer


def _steps(optimizer) -> set:
    return {float(state["step"]) for state in optimizer.state.values()}


def test_moment_filters_send_exp_avg_and_exp_avg_sq_only_and_the_step_stays_local():
    clients = [_stepped_selector(seed, label, steps) for seed, label, steps in ((0, 0, 2), (1, 1, 5))]
    results = []
    for selector, optimizer in clients:  # client side: the result filter appends the moments
        ctx = FLContext()
        ctx.set_prop(SELECTOR_STATE_PROP, (selector, optimizer), private=True, sticky=False)
        dxo = DXO(DataKind.WEIGHTS, data={"selector/x": np.zeros(1)})
        out = AdamMomentsSender().process(dxo.to_shareable(), ctx)
        results.append(unbundle(from_shareable(out).data))
    sent = results[0][MOMENTS_NAME]
    named = dict(clients[0][0].named_parameters())
    assert MOMENT_KEYS == ("exp_avg", "exp_avg_sq")
    assert set(sent) == {f"{name}.{key}" for name in named for key in MOMENT_KEYS}, "no 'step' travels"
    for name, param in named.items():
        assert sent[f"{name}.exp_avg"].shape == tuple(param.shape) and sent[f"{name}.exp_avg"].dtype == np.float32
    from medfl.common.validation import array_specs

    assert moment_specs(array_specs({k: v.detach().numpy() for k, v in named.items()})) == array_specs(sent)
    # server side (before any client loads: the sent arrays are views of each client's optimizer state)
    expected = {k: 0.25 * results[0][MOMENTS_NAME][k] + 0.75 * results[1][MOMENTS_NAME][k] for k in sent}
    averaged = weighted_mean([r[MOMENTS_NAME] for r in results], [1, 3])
    # client side: the data filter hands the moments to the executor, which loads them
    ctx = FLContext()
    task = DXO(DataKind.WEIGHTS, data=bundle({"selector": {"x": np.zeros(1)}, MOMENTS_NAME: averaged}))
    filtered = from_shareable(AdamMomentsReceiver().process(task.to_shareable(), ctx))
    assert list(filtered.data) == ["selector/x"], "moments must not reach the model parameters"
    for selector, optimizer in clients:
        before = _steps(optimizer)
        assert load_adam_moments(selector, optimizer, ctx.get_prop(SYNCED_MOMENTS_PROP)) == len(named)
        assert _steps(optimizer) == before, "each client keeps its own Adam step counter"
        for name, param in selector.named_parameters():
            for key in MOMENT_KEYS:
                np.testing.assert_allclose(optimizer.state[param][key].numpy(), expected[f"{name}.{key}"], rtol=1e-6,
                                           atol=1e-10)
    assert _steps(clients[0][1]) == {2.0} and _steps(clients[1][1]) == {5.0}


def test_released_moments_are_empty_until_received_or_zeroed():
    """A client releases its moments once sent; the server's averaged ones are adopted (shaped as the parameters),
    or, when none come back, the released ones restart at zero; Adam's step stays through both."""
    selector, optimizer = _stepped_selector(0, 2)
    sent = {k: v.copy() for k, v in adam_moments(selector, optimizer).items()}
    steps = _steps(optimizer)
    release_adam_moments(selector, optimizer)
    assert all(optimizer.state[p][k].numel() == 0 for p in selector.parameters() for k in MOMENT_KEYS)
    assert load_adam_moments(selector, optimizer, sent) == len(list(selector.parameters()))
    for name, param in selector.named_parameters():
        assert optimizer.state[param]["exp_avg"].shape == param.shape
        np.testing.assert_array_equal(optimizer.state[param]["exp_avg_sq"].numpy(), sent[f"{name}.exp_avg_sq"])
    release_adam_moments(selector, optimizer)
    assert zero_released_moments(selector, optimizer) == len(list(selector.parameters()))
    assert all(not optimizer.state[p][k].any() and optimizer.state[p][k].shape == p.shape
               for p in selector.parameters() for k in MOMENT_KEYS)
    assert zero_released_moments(selector, optimizer) == 0 and _steps(optimizer) == steps
    optimizer.step()  # Adam runs on the restored state


def test_synced_moments_do_not_touch_an_optimizer_that_has_not_stepped():
    """As the original (it loads into the existing state entries only): a fresh optimizer keeps its empty state."""
    selector, optimizer = _stepped_selector(0, 0)
    fresh = torch.optim.Adam(selector.parameters())
    assert load_adam_moments(selector, fresh, adam_moments(selector, optimizer)) == 0 and not fresh.state


def test_without_filters_the_optimizers_keep_their_own_moments():
    """Removing the filter pair turns the sync off: nothing is attached, nothing is loaded."""
    (a, opt_a), (b, opt_b) = _stepped_selector(0, 0), _stepped_selector(1, 1)
    before = {k: v.copy() for k, v in adam_moments(a, opt_a).items()}
    ctx = FLContext()
    task = DXO(DataKind.WEIGHTS, data=bundle({"selector": {"x": np.zeros(1)}}))
    assert AdamMomentsReceiver().process(task.to_shareable(), ctx) is not None
    assert ctx.get_prop(SYNCED_MOMENTS_PROP) is None
    after = adam_moments(a, opt_a)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert not all(np.array_equal(after[k], v) for k, v in adam_moments(b, opt_b).items())


def test_routing_is_strictly_greater_than_the_threshold():
    """The original routes to a personalised model only when ``max_score > select_threshold``."""
    even = torch.zeros(1, 2)  # softmax 0.5 / 0.5: top probability exactly 0.5, label 0
    assert route(even, 0.5).tolist() == [GLOBAL]
    assert route(even, 0.4999).tolist() == [0]
    saturated = torch.tensor([[100.0, 0.0]])  # probability exactly 1
    assert route(saturated, 1.0).tolist() == [GLOBAL] and route(saturated, 0.9).tolist() == [0]


def test_super_model_routes_each_image():
    torch.manual_seed(0)
    selector = build_selector_cnn(in_channels=1, num_classes=2, channels=(4,))
    with torch.no_grad():
        selector[-1].bias.copy_(torch.tensor([100.0, 0.0]))  # saturated softmax: probability exactly 1
    image = torch.rand(5, 1, 16, 16)
    nets = [build_network("unet", channels=(4, 8), strides=(2,), num_res_units=0).eval() for _ in range(3)]
    global_only = super_model_predict(image, selector, nets[0], nets[1:], threshold=1.0)
    torch.testing.assert_close(global_only, (torch.sigmoid(nets[0](image)) > 0.5).float())
    routed = super_model_predict(image, selector, nets[0], nets[1:], threshold=0.9)
    torch.testing.assert_close(routed, (torch.sigmoid(nets[1](image)) > 0.5).float())


def test_per_client_bundles_never_mix():
    network = {"name": "unet"}
    controller = FedSMController(num_rounds=1, site_labels={"a": 0, "b": 1}, network=network, selector_network=network)
    controller.models = {"global": {"w": np.zeros(1)}, "selector": {"w": np.ones(1)},
                         personal_name("a"): {"w": np.full(1, 10.0)}, personal_name("b"): {"w": np.full(1, 20.0)}}
    for client, value in (("a", 10.0), ("b", 20.0)):
        payload = unbundle(controller.payload_for(client))
        assert set(payload) == {"global", "personal", "selector"}
        assert payload["personal"]["w"][0] == value
        assert controller.payload_meta(client) == {"site_label": {"a": 0, "b": 1}[client]}
        assert controller.model_for_metric(client, "personal") == personal_name(client)


def test_vgg11_selector_is_the_originals():
    """cfg A without BN (8 convs 3x3 pad 1 + ReLU, 5 max pools), one input channel, AdaptiveAvgPool 7x7, the
    25088-4096-4096-K classifier with dropout 0.5; kaiming-normal (fan_out) convs, N(0, 0.01) linears, zero biases;
    the original's state_dict keys (networks/vgg.py)."""
    torch.manual_seed(0)
    net = build_network("vgg11", in_channels=1, num_classes=3).requires_grad_(False)
    assert isinstance(net, VGG11Selector)
    assert sum(p.numel() for p in net.parameters()) == VGG11_PARAMETERS == 128_777_475
    convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 256, 512, 512, 512, 512] and convs[0].in_channels == 1
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in net.features) == 5
    assert net.avgpool.output_size == (7, 7)
    linears = [m for m in net.classifier if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(25088, 4096), (4096, 4096), (4096, 3)]
    assert [m.p for m in net.classifier if isinstance(m, torch.nn.Dropout)] == [0.5, 0.5]
    assert all(float(m.bias.abs().max()) == 0 for m in [*convs, *linears])
    assert all(abs(float(m.weight.std()) - 0.01) < 1e-3 for m in linears[:2])
    fan_out = convs[4].out_channels * 9  # kaiming normal, mode fan_out, ReLU gain: std sqrt(2 / fan_out)
    assert abs(float(convs[4].weight.std()) - (2 / fan_out) ** 0.5) < 0.02 * (2 / fan_out) ** 0.5
    keys = list(net.state_dict())
    assert keys[:2] == ["features.0.weight", "features.0.bias"] and keys[-2:] == ["classifier.6.weight",
                                                                                   "classifier.6.bias"]
    assert net.eval()(torch.rand(2, 1, 32, 32)).shape == (2, 3)


def test_the_job_defaults_are_the_originals_selector_and_weights():
    config = PROJECT_ROOT / "jobs" / "fedsm_prostate" / "app" / "config"
    train = json.loads((config / "config_train.json").read_text())
    server = json.loads((config / "config_fed_server.json").read_text())["workflows"][0]["args"]
    vgg = {"name": "vgg11", "args": {"in_channels": 1, "num_classes": 3}}
    assert train["selector_network"] == server["selector_network"] == vgg
    assert train["selector_epochs"] == 1 and train["selector_optimizer"] == {"name": "adam", "lr": 0.001}
    assert (train["batch_size"], train["augment"], train["image_size"], train["resize_mode"]) == (1, False, 256,
                                                                                                   "bilinear")
    assert server["weighting"] == "steps" and server["soft_pull_lambda"] == 0.7


# ------------------------------------------------------------------------------------------ the client's rounds
def fedsm_client(demo_prostate, monkeypatch, site="client_MSD", **overrides) -> FedSMExecutor:
    """The job's FedSM client on the demo slices (tiny UNet, the small selector unless overridden), set up."""
    monkeypatch.setenv("DATASET_ROOT", str(demo_prostate))
    config = json.loads((PROJECT_ROOT / "jobs/fedsm_prostate/app/config/config_train.json").read_text())
    config.update({"network": TINY_UNET, "selector_network": SMALL_SELECTOR, "num_threads": 1, "device": "cpu",
                   **PROSTATE_TRAIN, **overrides})
    client = configure(FedSMExecutor(), config, site)
    client.setup(None)
    return client


def payload(client: FedSMExecutor, label: int, moments=None) -> dict:
    models = {"global": client.models["global"], "personal": client.models["personal"], "selector": client.selector}
    params = bundle({name: {k: v.detach().numpy().copy() for k, v in m.state_dict().items()}
                     for name, m in models.items()})
    client.task_meta = {SITE_LABEL: label}
    return params


def test_selector_makes_one_adam_step_per_round_on_the_gradient_summed_over_the_site(demo_prostate, monkeypatch,
                                                                                     one_torch_thread):
    client = fedsm_client(demo_prostate, monkeypatch)
    ctx = FLContext()
    client.load_payload(payload(client, 1), ctx)
    batches = len(client.train_loader)
    assert batches == client.num_samples("training") > 1, "batch size 1: one batch per training slice"
    seen = {}
    reference = copy.deepcopy(client.selector)
    step = client.selector_optimizer.step

    def recording_step(*args, **kwargs):  # the gradient the single step uses
        seen.update({n: p.grad.clone() for n, p in client.selector.named_parameters()})
        return step(*args, **kwargs)

    client.selector_optimizer.step = recording_step
    client.train_round(Signal(), ctx)
    assert _steps(client.selector_optimizer) == {1.0}, "one selector epoch = one Adam step"
    assert all(p.grad is None for p in client.selector.parameters()), "the gradients are freed after the step"
    # the same slices one by one (the order does not change the sum; the small selector has no dropout)
    reference.train()
    for batch in DataLoader(client.datasets["training"], batch_size=1):
        logits = reference(batch["image"])
        torch.nn.functional.cross_entropy(logits, torch.full((logits.shape[0],), 1)).backward()
    expected_grads = {n: p.grad for n, p in reference.named_parameters()}
    for name, grad in expected_grads.items():
        torch.testing.assert_close(seen[name], grad, rtol=1e-4, atol=1e-6)
    client.current_round = 1
    client.load_payload(payload(client, 1), FLContext())
    client.train_round(Signal(), FLContext())
    assert _steps(client.selector_optimizer) == {2.0}, "the step count grows by one a round"


def test_load_payload_releases_what_it_received_and_the_synced_moments(demo_prostate, monkeypatch, one_torch_thread):
    client = fedsm_client(demo_prostate, monkeypatch)
    client.load_payload(payload(client, 1), FLContext())
    client.train_round(Signal(), FLContext())
    moments = {k: v.copy() for k, v in adam_moments(client.selector, client.selector_optimizer).items()}
    ctx = FLContext()
    ctx.set_prop(SYNCED_MOMENTS_PROP, {k: np.full_like(v, 0.5) for k, v in moments.items()}, private=True,
                 sticky=False)
    received = payload(client, 1)
    client.load_payload(received, ctx)
    assert received == {} and ctx.get_prop(SYNCED_MOMENTS_PROP) is None
    assert all(np.all(v == 0.5) for v in adam_moments(client.selector, client.selector_optimizer).values())
    exported = unbundle(client.export_params(ctx))["selector"]
    state = client.selector.state_dict()
    assert all(np.shares_memory(exported[k], state[k].numpy()) for k in state), "views of the selector, not copies"


def test_missing_site_label_is_a_clear_error(demo_prostate, monkeypatch, one_torch_thread):
    client = fedsm_client(demo_prostate, monkeypatch)
    params = payload(client, 0)
    client.task_meta = {}
    with pytest.raises(DataError, match=r"^\[client_MSD\] the server sent no site label"):
        client.load_payload(params, FLContext())


# ------------------------------------------------------------------------------------------ the server
def fedsm_server(**settings) -> FedSMController:
    controller = FedSMController(num_rounds=2, network=TINY_UNET, selector_network=SMALL_SELECTOR,
                                 site_labels={c: i for i, c in enumerate(PROSTATE_CLIENTS)}, **settings)
    controller.engine = type("Engine", (), {"get_clients": lambda self: [type("C", (), {"name": c})()
                                                                          for c in PROSTATE_CLIENTS]})()
    controller.get_app_dir = lambda: str(PROJECT_ROOT / "nonexistent")
    return controller


def honest_result(controller, client, sent: FLModel, steps: int, with_moments=True) -> FLModel:
    params = {k: np.asarray(v + 1, v.dtype) for k, v in sent.params.items() if not k.startswith(MOMENTS_NAME)}
    if with_moments:
        params.update(bundle({MOMENTS_NAME: {k: np.zeros(s.shape, s.dtype)
                                             for k, s in moment_specs(controller.selector_parameters).items()}}))
    return FLModel(params=params, current_round=sent.current_round, metrics={"global": 0.5},
                   meta={NUM_TRAIN_SAMPLES: 2 * steps, NUM_VAL_SAMPLES: 3, NUM_TRAIN_STEPS: steps})


def test_server_checks_moments_without_step_and_the_local_step_count(monkeypatch, tmp_path):
    controller = fedsm_server()
    monkeypatch.setattr("medfl.fedsm.controller.atomic_write_json", lambda *a, **k: None)
    controller.models = controller.initial_models()
    client = PROSTATE_CLIENTS[0]
    sent = FLModel(params=controller.payload_for(client), current_round=0)
    spec = controller.expected_result(client, "train", sent)
    assert check_result(spec, honest_result(controller, client, sent, 5)) is None
    assert check_result(spec, honest_result(controller, client, sent, 5, with_moments=False)) is None
    with_step = honest_result(controller, client, sent, 5)
    with_step.params[f"{MOMENTS_NAME}/0.conv.weight.step"] = np.array(1.0, np.float32)
    assert "unexpected array(s) ['selector_adam/0.conv.weight.step']" in check_result(spec, with_step)
    bad_steps = honest_result(controller, client, sent, 5)
    bad_steps.meta[NUM_TRAIN_STEPS] = 1e9
    assert "num_train_steps is 1000000000.0 (float), not an integer count" in check_result(spec, bad_steps)
    del bad_steps.meta[NUM_TRAIN_STEPS]
    assert "num_train_steps" in check_result(spec, bad_steps)


@pytest.mark.parametrize("weighting, weights", [("steps", [1, 2, 5]), ("samples", [20, 4, 4]), ("equal", [1, 1, 1])])
def test_global_selector_and_moments_are_averaged_by_the_weighting(monkeypatch, weighting, weights):
    controller = fedsm_server(weighting=weighting)
    monkeypatch.setattr("medfl.fedsm.controller.atomic_write_json", lambda *a, **k: None)
    controller.models = controller.initial_models()
    results, steps, samples = {}, [1, 2, 5], [20, 4, 4]
    for i, client in enumerate(PROSTATE_CLIENTS):
        sent = FLModel(params=controller.payload_for(client), current_round=0)
        result = honest_result(controller, client, sent, steps[i])
        result.meta[NUM_TRAIN_SAMPLES] = samples[i]
        result.params = {k: np.full_like(v, i) for k, v in result.params.items()}
        results[client] = result
    controller.aggregate(results)
    expected = sum(i * w for i, w in enumerate(weights)) / sum(weights)
    for name in ("global", "selector"):
        assert all(np.allclose(v, expected) for v in controller.models[name].values() if v.dtype.kind == "f"), name
    assert controller.selector_moments and all(np.allclose(v, expected) for v in controller.selector_moments.values())
