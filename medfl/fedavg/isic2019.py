"""FedAvg and BSM-FL baselines on Fed-ISIC2019 (``jobs/fedavg_isic2019``, ``jobs/fedavg_bsm_isic2019``)."""

from __future__ import annotations

from typing import Dict

from nvflare.app_common.abstract.fl_model import FLModel

from medfl.common.protocol import NUM_TRAIN_STEPS
from medfl.federations.isic2019.server import ISIC2019Server, ISIC2019ServerSettings

from .controller import FedAvgController, FedAvgSettings


class ISIC2019FedAvgSettings(ISIC2019ServerSettings, FedAvgSettings):
    """FedAvg's settings and the federation's initial trunk."""


class ISIC2019FedAvgController(ISIC2019Server, FedAvgController):
    """FedAvg with the federation's ImageNet-initialised model and pooled balanced accuracy (FedMAS §3.7's
    baselines: the client decides between cross-entropy (FedAvg) and Balanced Softmax (BSM-FL)).

    With ``weighting="steps"`` (the jobs') ``a_k`` is proportional to ``len(train_loader)``, as the original's
    ``n_k = len(train_loader) * batch_size`` with one batch size at every centre. Each round's weights go to the
    ``balanced_accuracy.json`` history.
    """

    Settings = ISIC2019FedAvgSettings

    def aggregate(self, results: Dict[str, FLModel]) -> None:
        super().aggregate(results)
        weights = self.aggregation_weights(results)
        total = sum(weights)
        round_number = next(iter(results.values())).current_round
        self.record(round_number, aggregation={
            client: {"weight": w / total, NUM_TRAIN_STEPS: result.meta.get(NUM_TRAIN_STEPS)}
            for (client, result), w in zip(results.items(), weights)})
