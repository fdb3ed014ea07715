"""FedAvg on MedMNIST as the seed's Flower simulation runs it (``jobs/fedavg_medmnist``)."""

from __future__ import annotations

from medfl.federations.medmnist.server import MedMNISTTestEvaluation, MedMNISTTestSettings

from .controller import FedAvgController, FedAvgSettings


class MedMNISTFedAvgSettings(MedMNISTTestSettings, FedAvgSettings):
    """FedAvg's settings (client sampling included) and the server-side test's."""


class MedMNISTFedAvgController(MedMNISTTestEvaluation, FedAvgController):
    """FedAvg with Flower's client sampling (:class:`~medfl.fedavg.controller.FedAvgController`) and the
    server-side evaluation of the global model on the official test split
    (:class:`~medfl.federations.medmnist.server.MedMNISTTestEvaluation`).

    Client-side evaluation: the sampled clients validate the global model they receive on their val split
    before training (accuracy as ``global``, cross-entropy as ``global_loss``); ``best_global_model.pt`` is the
    model with the best val-size-weighted mean accuracy of the clients that validated it, ``last_global_model.pt``
    the final one.
    """

    Settings = MedMNISTFedAvgSettings
