"""FedAvg and BSM-FL baselines on Fed-ISIC2019 (``jobs/fedavg_isic2019``, ``jobs/fedavg_bsm_isic2019``)."""

from __future__ import annotations

from medfl.federations.isic2019.server import ISIC2019Server

from .controller import FedAvgController


class ISIC2019FedAvgController(ISIC2019Server, FedAvgController):
    """FedAvg with the federation's ImageNet-initialised model and pooled balanced accuracy (FedMAS §3.7's
    baselines: the client decides between cross-entropy (FedAvg) and Balanced Softmax (BSM-FL))."""
