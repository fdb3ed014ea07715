"""FedAvg server: one global model, the weighted mean of the clients' updates."""

from __future__ import annotations

from typing import Dict

from nvflare.app_common.abstract.fl_model import FLModel

from medfl.common.controller import RoundController, client_weights
from medfl.common.params import Params, bundle, unbundle, weighted_mean


class FedAvgController(RoundController):
    """FedAvg: ``w <- sum_k a_k w_k`` with ``a_k = n_k / sum n`` (``weighting="samples"``) or ``1/K``.

    Args:
        weighting: ``"samples"`` (training-set sizes, the standard) or ``"equal"``.
        **kwargs: see :class:`~medfl.common.controller.RoundController`.
    """

    def __init__(self, weighting: str = "samples", **kwargs):
        super().__init__(**kwargs)
        client_weights({}, weighting)  # validate early
        self.weighting = weighting

    def initial_models(self) -> Dict[str, Params]:
        return {"global": self.build_initial_params()}

    def payload_for(self, client: str) -> Params:
        return bundle({"global": self.models["global"]})

    def aggregate(self, results: Dict[str, FLModel]) -> None:
        updates = [unbundle(r.params)["global"] for r in results.values()]
        self.models["global"] = weighted_mean(updates, client_weights(results, self.weighting))
