"""FedAvg server: one global model, the weighted mean of the clients' updates, optionally on a sample of clients."""

from __future__ import annotations

from typing import Dict, List, Literal

from pydantic import Field

from nvflare.app_common.abstract.fl_model import FLModel

from medfl.common.controller import RoundController, ServerSettings, client_weights
from medfl.common.params import Params, bundle, unbundle, weighted_mean
from medfl.common.sampling import sample_clients
from medfl.common.settings import NetworkSpec


class FedAvgSettings(ServerSettings):
    """FedAvg server settings (its workflow ``args`` in ``config_fed_server.json``)."""

    network: NetworkSpec = Field(description="the network of the global model")
    weighting: Literal["samples", "steps", "equal"] = Field("samples", description=(
        "client weights: training-set sizes (FedAvg), local optimizer steps, or 1/K"))
    fraction_fit: float = Field(1.0, gt=0, le=1, description="share of the connected clients sampled per round")
    min_fit_clients: int = Field(1, ge=1, description="the least number of clients sampled per round")
    sampling_seed: int = Field(0, ge=0, description="seed of the per-round client samples")


class FedAvgController(RoundController):
    """FedAvg (McMahan et al., 2017): ``w <- sum_k a_k w_k`` with ``a_k = n_k / sum n`` (``weighting="samples"``),
    local steps (``"steps"``) or ``1/K`` (``"equal"``).

    With ``fraction_fit < 1`` each round trains a sample of the clients, as Flower's FedAvg strategy draws it
    (:func:`~medfl.common.sampling.sample_clients`, seeded by ``(sampling_seed, round)``); the final validation
    goes to a sample drawn the same way.

    Settings: :class:`FedAvgSettings`.
    """

    Settings = FedAvgSettings

    def __init__(self, **settings):
        super().__init__(**settings)
        self.sampled: Dict[int, List[str]] = {}

    def initial_models(self) -> Dict[str, Params]:
        return {"global": self.build_initial_params()}

    def select_clients(self, round_number: int) -> List[str]:
        available = super().select_clients(round_number)
        clients = available
        if self.settings.fraction_fit < 1.0:
            clients = sample_clients(available, round_number, self.settings.fraction_fit,
                                     self.settings.min_fit_clients, self.settings.sampling_seed)
            task = "final validation" if round_number == self.num_rounds else f"round {round_number + 1}"
            self.info(f"{task}: sampled {len(clients)} of {len(available)} clients: {', '.join(clients)}")
        self.sampled[round_number] = clients
        return clients

    def payload_for(self, client: str) -> Params:
        return bundle({"global": self.models["global"]})

    def aggregation_weights(self, results: Dict[str, FLModel]) -> List[float]:
        """``a_k`` in ``results`` order (not normalised), by ``weighting``."""
        return client_weights(results, self.settings.weighting)

    def aggregate(self, results: Dict[str, FLModel]) -> None:
        updates = [unbundle(r.params)["global"] for r in results.values()]
        self.models["global"] = weighted_mean(updates, self.aggregation_weights(results))
