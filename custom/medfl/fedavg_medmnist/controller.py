"""Server of the Flower-style FedAvg on MedMNIST: client sampling per round and test-set evaluation on the server."""

from __future__ import annotations

import os
import time
from typing import Dict, List

from torch.utils.data import DataLoader

from medfl.common.config import config_path
from medfl.common.executor import select_device
from medfl.common.io import atomic_write_json
from medfl.common.networks import build_network
from medfl.common.params import Params, load_numpy
from medfl.fedavg.controller import FedAvgController

from .data import DEFAULT_DATASET, MedMNISTDataset, medmnist_info
from .evaluation import TEST_METRICS_FILE, evaluate_classifier
from .executor import DEFAULT_EVAL_BATCH_SIZE, DEFAULT_NETWORK
from .networks import network_for_data
from .sampling import check_sampling, sample_clients

SERVER_SITE = "server"
# Flower's simulation_pytorch: fraction_fit=0.1 with min_fit_clients=10 for 100 clients; the PathMNIST example
# trains all of its 3 clients every round. fraction_fit=0.1 with min_fit_clients=3 gives both: 3 of 3, 10 of 100.
DEFAULT_FRACTION_FIT = 0.1
DEFAULT_MIN_FIT_CLIENTS = 3


class MedMNISTFedAvgController(FedAvgController):
    """FedAvg as Flower's ``start_simulation`` runs it for MedMNIST (ALGORITHMS.md §4.1, §4.4).

    * Client sampling: each round trains ``max(int(fraction_fit * available), min_fit_clients)`` clients drawn
      uniformly without replacement, seeded by ``(sampling_seed, round)`` (:mod:`.sampling`). The final
      validation task goes to a sample drawn the same way.
    * Aggregation: ``w <- sum_k n_k w_k / sum_k n_k`` over the sampled clients, ``n_k`` their training examples.
    * Server-side evaluation (Flower's ``evaluate_fn``): the global model on the official **test** split of
      ``npz_path`` at step 0 (initial parameters) and after every round: logged, written to TensorBoard as
      ``test/<metric>`` and to ``test_metrics.json`` in the server's app folder. The test split is only
      reported, never used to choose a model.
    * Client-side evaluation: the sampled clients validate the global model they receive on their val split
      before training (accuracy as ``global``, cross-entropy as ``global_loss``); ``best_global_model.pt`` is the
      model with the best val-size-weighted mean accuracy of the clients that validated it (a different sample
      each round), ``last_global_model.pt`` the final one.

    Args:
        fraction_fit: share of the available clients sampled per round, in (0, 1].
        min_fit_clients: the least number of clients sampled per round (more than are connected stops the run).
        sampling_seed: seed of the per-round client samples.
        **kwargs: see :class:`~medfl.fedavg.controller.FedAvgController` (``num_rounds``, ``weighting`` ...).
    """

    def __init__(
        self,
        fraction_fit: float = DEFAULT_FRACTION_FIT,
        min_fit_clients: int = DEFAULT_MIN_FIT_CLIENTS,
        sampling_seed: int = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_sampling(fraction_fit, min_fit_clients)
        self.fraction_fit = fraction_fit
        self.min_fit_clients = min_fit_clients
        self.sampling_seed = sampling_seed
        self.sampled: Dict[int, List[str]] = {}
        self.test_history: List[dict] = []

    def initial_models(self) -> Dict[str, Params]:
        dataset = self.train_config.get("dataset", DEFAULT_DATASET)
        npz_path = config_path(self.train_config, "npz_path", SERVER_SITE)
        test_set = MedMNISTDataset.from_npz(npz_path, "test", dataset, site=SERVER_SITE)
        batch_size = int(self.train_config.get("eval_batch_size", DEFAULT_EVAL_BATCH_SIZE))
        self.test_loader = DataLoader(test_set, batch_size=batch_size)
        network = network_for_data(self.train_config.get("network", DEFAULT_NETWORK), medmnist_info(dataset),
                                   test_set.image_size)
        self.train_config["network"] = network  # what build_initial_params builds
        self.device = select_device(self.train_config.get("device", "auto"))
        self.test_model = build_network(network["name"], **network["args"]).to(self.device)
        self.info(f"server test set: {len(test_set)} images of {npz_path}")
        return super().initial_models()

    def select_clients(self, round_number: int) -> List[str]:
        available = [c.name for c in self.engine.get_clients()]
        clients = sample_clients(available, round_number, self.fraction_fit, self.min_fit_clients, self.sampling_seed)
        task = "final validation" if round_number == self.num_rounds else f"round {round_number + 1}/{self.num_rounds}"
        self.info(f"{task}: sampled {len(clients)} of {len(available)} clients: {', '.join(clients)}")
        self.sampled[round_number] = clients
        return clients

    def server_evaluate(self, step: int) -> None:
        load_numpy(self.test_model, self.models["global"])
        metrics = evaluate_classifier(self.test_model, self.test_loader, self.device)
        for name, value in metrics.items():
            self._add_scalar(f"test/{name}", value, step)
        which = "initial global model" if step == 0 else f"global model after {step} round(s)"
        self.info(f"server test evaluation at round {step} ({which}): accuracy={metrics['accuracy']:.4f}, "
                  f"loss={metrics['loss']:.4f} on {len(self.test_loader.dataset)} test images")
        trained_by = self.sampled.get(step - 1, []) if step > 0 else []
        self.test_history.append({"step": step, "time": time.time(), "trained_by": trained_by, **metrics})
        atomic_write_json(self.test_history, os.path.join(self.get_app_dir(), TEST_METRICS_FILE))

    def extra_state(self) -> dict:
        return {"test_history": self.test_history}

    def load_extra_state(self, state: dict) -> None:
        self.test_history = list(state.get("test_history", []))
