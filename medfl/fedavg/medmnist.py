"""FedAvg on MedMNIST: the seed's Flower simulation (``jobs/fedavg_medmnist``) and its scale-out
(``jobs/fedavg_medmnist_scaleout``)."""

from __future__ import annotations

from medfl.federations.medmnist.server import MedMNISTTestEvaluation, MedMNISTTestSettings

from .controller import FedAvgController, FedAvgSettings


class MedMNISTFedAvgSettings(MedMNISTTestSettings, FedAvgSettings):
    """FedAvg's settings (client sampling included) and the server-side test's."""


class MedMNISTFedAvgController(MedMNISTTestEvaluation, FedAvgController):
    """Flower 0.19's ``FedAvg`` strategy as the seed configures it (ALGORITHMS.md §4.0): the clients' weights
    averaged by their numbers of training examples (:class:`~medfl.fedavg.controller.FedAvgController`), every
    client in every round (``fraction_fit`` 1; the scale-out job samples ``fraction_fit`` of them as Flower does),
    and the seed's ``eval_fn``: the global model tested on the official test split at round 0 and after every
    round (:class:`~medfl.federations.medmnist.server.MedMNISTTestEvaluation`).

    Client-side evaluation: the clients of a round validate the global model they receive on their val share
    before training (accuracy as ``global``, the summed loss as ``global_loss``, MedMNIST's AUC as ``global_auc``);
    ``best_global_model.pt`` is the model with the best val-size-weighted mean accuracy of the clients that
    validated it, ``last_global_model.pt`` the final one.
    """

    Settings = MedMNISTFedAvgSettings
