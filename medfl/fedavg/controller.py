"""FedAvg server: one global model, the weighted mean of the clients' updates, optionally on a sample of clients."""

from __future__ import annotations

from typing import Dict, List

from nvflare.app_common.abstract.fl_model import FLModel

from medfl.common.controller import RoundController, client_weights
from medfl.common.params import Params, bundle, unbundle, weighted_mean
from medfl.common.sampling import check_sampling, sample_clients


class FedAvgController(RoundController):
    """FedAvg (McMahan et al., 2017): ``w <- sum_k a_k w_k`` with ``a_k = n_k / sum n`` (``weighting="samples"``),
    local steps (``"steps"``) or ``1/K`` (``"equal"``).

    With ``fraction_fit < 1`` each round trains a sample of the clients, as Flower's FedAvg strategy draws it
    (:func:`~medfl.common.sampling.sample_clients`, seeded by ``(sampling_seed, round)``); the final validation
    goes to a sample drawn the same way.

    Args:
        weighting: ``"samples"`` (training-set sizes, the standard), ``"steps"`` or ``"equal"``.
        fraction_fit: share of the connected clients sampled per round, in (0, 1] (1: every client).
        min_fit_clients: the least number of clients sampled per round (0: every client when ``fraction_fit`` is 1).
        sampling_seed: seed of the per-round client samples.
        **kwargs: see :class:`~medfl.common.controller.RoundController`.
    """

    def __init__(self, weighting: str = "samples", fraction_fit: float = 1.0, min_fit_clients: int = 1,
                 sampling_seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        client_weights({}, weighting)  # validate early
        check_sampling(fraction_fit, min_fit_clients)
        self.weighting = weighting
        self.fraction_fit = fraction_fit
        self.min_fit_clients = min_fit_clients
        self.sampling_seed = sampling_seed
        self.sampled: Dict[int, List[str]] = {}

    def initial_models(self) -> Dict[str, Params]:
        return {"global": self.build_initial_params()}

    def select_clients(self, round_number: int) -> List[str]:
        available = super().select_clients(round_number)
        clients = available
        if self.fraction_fit < 1.0:
            clients = sample_clients(available, round_number, self.fraction_fit, self.min_fit_clients,
                                     self.sampling_seed)
            task = "final validation" if round_number == self.num_rounds else f"round {round_number + 1}"
            self.info(f"{task}: sampled {len(clients)} of {len(available)} clients: {', '.join(clients)}")
        self.sampled[round_number] = clients
        return clients

    def payload_for(self, client: str) -> Params:
        return bundle({"global": self.models["global"]})

    def aggregation_weights(self, results: Dict[str, FLModel]) -> List[float]:
        """``a_k`` in ``results`` order (not normalised), by ``weighting``."""
        return client_weights(results, self.weighting)

    def aggregate(self, results: Dict[str, FLModel]) -> None:
        updates = [unbundle(r.params)["global"] for r in results.values()]
        self.models["global"] = weighted_mean(updates, self.aggregation_weights(results))
