"""FedSM parts: SoftPull, the Adam-moment filter pair, super-model routing, per-client bundles."""

import numpy as np
import pytest
import torch

from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.fl_context import FLContext

from medfl.common.params import bundle, unbundle, weighted_mean
from medfl.fedsm.controller import FedSMController, personal_name
from medfl.fedsm.moments import (
    SELECTOR_STATE_PROP,
    SYNCED_MOMENTS_PROP,
    AdamMomentsReceiver,
    AdamMomentsSender,
    adam_moments,
    load_adam_moments,
)
from medfl.fedsm.networks import VGG11Selector, build_selector_cnn
from medfl.fedsm.protocol import MOMENTS_NAME
from medfl.fedsm.softpull import soft_pull
from medfl.fedsm.super_model import GLOBAL, route, super_model_predict


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
    assert soft_pull({"only": {"w": np.ones(2)}}, lam)["only"]["w"].tolist() == [1.0, 1.0]
    with pytest.raises(ValueError):
        soft_pull(personal, 1.5)


def _trained_selector(seed, label):
    torch.manual_seed(seed)
    selector = build_selector_cnn(in_channels=1, num_classes=3, channels=(4, 8))
    optimizer = torch.optim.Adam(selector.parameters(), lr=1e-3)
    for _ in range(2):
        optimizer.zero_grad()
        logits = selector(torch.rand(4, 1, 16, 16))
        torch.nn.functional.cross_entropy(logits, torch.full((4,), label)).backward()
        optimizer.step()
    return selector, optimizer


def test_moment_filters_round_trip_and_averaging():
    clients = [_trained_selector(seed, label) for seed, label in ((0, 0), (1, 1))]
    results = []
    for selector, optimizer in clients:  # client side: the result filter appends the moments
        ctx = FLContext()
        ctx.set_prop(SELECTOR_STATE_PROP, (selector, optimizer), private=True, sticky=False)
        dxo = DXO(DataKind.WEIGHTS, data={"selector/x": np.zeros(1)})
        out = AdamMomentsSender().process(dxo.to_shareable(), ctx)
        results.append(unbundle(from_shareable(out).data))
    sent = results[0][MOMENTS_NAME]
    named = dict(clients[0][0].named_parameters())
    for name, param in named.items():
        assert sent[f"{name}.exp_avg"].shape == tuple(param.shape) and sent[f"{name}.exp_avg"].dtype == np.float32
        assert sent[f"{name}.step"] == 2
    averaged = weighted_mean([r[MOMENTS_NAME] for r in results], [1, 3])  # server side
    # client side: the data filter hands the moments to the executor, which loads them
    ctx = FLContext()
    task = DXO(DataKind.WEIGHTS, data=bundle({"selector": {"x": np.zeros(1)}, MOMENTS_NAME: averaged}))
    filtered = from_shareable(AdamMomentsReceiver().process(task.to_shareable(), ctx))
    assert list(filtered.data) == ["selector/x"], "moments must not reach the model parameters"
    selector, optimizer = clients[0]
    load_adam_moments(selector, optimizer, ctx.get_prop(SYNCED_MOMENTS_PROP))
    for name, param in selector.named_parameters():
        expected = 0.25 * results[0][MOMENTS_NAME][f"{name}.exp_avg_sq"] + 0.75 * results[1][MOMENTS_NAME][f"{name}.exp_avg_sq"]
        np.testing.assert_allclose(optimizer.state[param]["exp_avg_sq"].numpy(), expected, rtol=1e-6)
    assert adam_moments(selector, optimizer).keys() == sent.keys()


def test_without_filters_the_optimizers_keep_their_own_moments():
    """Removing the filter pair turns the sync off: nothing is attached, nothing is loaded."""
    (a, opt_a), (b, opt_b) = _trained_selector(0, 0), _trained_selector(1, 1)
    before = {k: v.copy() for k, v in adam_moments(a, opt_a).items()}
    ctx = FLContext()
    task = DXO(DataKind.WEIGHTS, data=bundle({"selector": {"x": np.zeros(1)}}))
    assert AdamMomentsReceiver().process(task.to_shareable(), ctx) is not None
    assert ctx.get_prop(SYNCED_MOMENTS_PROP) is None
    after = adam_moments(a, opt_a)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert not all(np.array_equal(after[k], v) for k, v in adam_moments(b, opt_b).items())


def test_routing_threshold_one_is_global_only():
    torch.manual_seed(0)
    selector = build_selector_cnn(in_channels=1, num_classes=2, channels=(4,))
    with torch.no_grad():
        selector[-1].bias.copy_(torch.tensor([100.0, 0.0]))  # saturated softmax: probability exactly 1
    image = torch.rand(5, 1, 16, 16)
    assert route(selector(image), 1.0).tolist() == [GLOBAL] * 5
    assert route(selector(image), 0.9).tolist() == [0] * 5
    from medfl.common.networks import build_network

    nets = [build_network("unet", channels=(4, 8), strides=(2,), num_res_units=0) for _ in range(3)]
    for net in nets:
        net.eval()
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


def test_vgg11_selector_layout():
    net = VGG11Selector(in_channels=1, num_classes=3, hidden=64)
    assert net(torch.rand(2, 1, 64, 64)).shape == (2, 3)
    convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 256, 512, 512, 512, 512]
