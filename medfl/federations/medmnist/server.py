"""MedMNIST's server side: the global model tested on the official test split, at round 0 and after every round.

As the seed's Flower ``eval_fn`` (``centralised_eval_fn``: the global model on the full test split, batches of
50, summed loss, MedMNIST's AUC and accuracy; Flower calls it on the initial parameters and after every round):
logged, written to TensorBoard as ``test/<metric>`` and to ``test_metrics.json`` in the server's app folder. The
test split is only reported, never used to choose a model. Mix :class:`MedMNISTTestEvaluation` into an
aggregation controller, listed first.
"""

from __future__ import annotations

import os
import time
from typing import Dict, List, Literal, Optional

from pydantic import Field
from torch.utils.data import DataLoader

from medfl.common.controller import SERVER_SITE, RoundController, ServerSettings
from medfl.common.io import atomic_write_json
from medfl.common.networks import build_network
from medfl.common.params import Params, load_numpy
from medfl.common.runtime import select_device
from medfl.common.settings import NetworkSpec

from .data import MedMNISTDataset, MedMNISTSource, medmnist_info
from .evaluation import TEST_METRICS_FILE, evaluate_classifier
from .networks import DEFAULT_NETWORK, network_for_data


class MedMNISTTestSettings(MedMNISTSource, ServerSettings):
    """What the server-side test adds to an aggregation controller's settings: the test data and the network."""

    network: NetworkSpec = Field(DEFAULT_NETWORK, description=(
        "the global model's network (in_channels, num_classes, image_size follow from the data)"))
    device: str = Field("auto", description="'auto' (CUDA when available), 'cpu', 'cuda', ...")
    cross_site_split: Literal["testing", "validation"] = Field("validation", description=(
        "the split every site scores the final models on: the clients hold shares of the official train split "
        "only (the test split is the server's), so their validation shares"))


class MedMNISTTestEvaluation(RoundController):
    """Server-side test evaluation of ``self.models["global"]`` on the test split of ``<data_root>/<dataset>.npz``
    (:class:`MedMNISTTestSettings`). Each record of ``test_metrics.json`` names the clients that trained the model
    (``self.sampled`` of a sampling controller, when it keeps one).
    """

    def __init__(self, **settings):
        super().__init__(**settings)
        self.test_history: List[dict] = []

    def initial_models(self) -> Dict[str, Params]:
        dataset = self.settings.dataset
        npz_path = self.settings.npz_path(SERVER_SITE)
        test_set = MedMNISTDataset.from_npz(npz_path, "test", dataset, site=SERVER_SITE)
        self.test_loader = DataLoader(test_set, batch_size=self.settings.eval_batch_size)
        self.network = network_for_data(self.settings.network, medmnist_info(dataset), test_set.image_size)
        self.device = select_device(self.settings.device)
        self.test_model = build_network(self.network.name, **self.network.args).to(self.device)
        self.info(f"server test set: {len(test_set)} images of {npz_path}")
        return super().initial_models()

    def build_initial_params(self, network: Optional[NetworkSpec] = None) -> Params:
        return super().build_initial_params(network or self.network)

    def server_evaluate(self, step: int) -> None:
        load_numpy(self.test_model, self.models["global"])
        metrics = evaluate_classifier(self.test_model, self.test_loader, self.device)
        for name, value in metrics.items():
            self._add_scalar(f"test/{name}", value, step)
        which = "initial global model" if step == 0 else f"global model after {step} round(s)"
        self.info(f"server test evaluation at round {step} ({which}): accuracy={metrics['accuracy']:.4f}, "
                  f"auc={metrics['auc']:.4f}, loss={metrics['loss']:.4f} on {len(self.test_loader.dataset)} "
                  "test images")
        trained_by = getattr(self, "sampled", {}).get(step - 1, []) if step > 0 else []
        self.test_history.append({"step": step, "time": time.time(), "trained_by": trained_by, **metrics})
        atomic_write_json(self.test_history, os.path.join(self.get_app_dir(), TEST_METRICS_FILE))

    def extra_state(self) -> dict:
        return {**super().extra_state(), "test_history": self.test_history}

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)
        self.test_history = list(state.get("test_history", []))
