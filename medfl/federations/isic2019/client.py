"""Fed-ISIC2019 baseline client (FedMAS's setting): BSM-FL or plain FedAvg on one centre.

It reports, for the global model it received, the per-class correct predictions and class sizes on its
validation and test splits (:data:`~medfl.federations.isic2019.protocol.CLASS_COUNTS`), so that the server computes
pooled balanced accuracy from counts.
"""

from __future__ import annotations

from typing import Any, Callable, Dict

import torch
from pydantic import Field
from torch.nn.utils import clip_grad_norm_
from torch.utils.data import DataLoader, Dataset

from nvflare.apis.fl_context import FLContext

from medfl.common.classification import ClassificationExecutor, ClassificationSettings
from medfl.common.errors import DataError
from medfl.common.losses import TrainingLoss, classification_loss
from medfl.common.metrics import predict_probabilities
from medfl.common.params import Params

from . import networks  # noqa: F401  (registers resnet_classifier)
from .data import DEFAULT_IMAGE_SIZE, SkinLesionDataset
from .evaluation import TESTING, VALIDATION, balanced_accuracy_from_counts, class_hits
from .protocol import CLASS_COUNTS, SAMPLES_PER_EPOCH

SPLIT_FILES = {"training": "train.csv", VALIDATION: "valid.csv", TESTING: "test.csv"}


class ISIC2019Settings(ClassificationSettings):
    """A Fed-ISIC2019 client's ``config_train.json``: the classification keys, the data and the loss."""

    data_root: str = Field(description=(
        "folder of the prepared centres (<client>/{train,valid,test}.csv, prepare_isic2019.py); DATASET_ROOT allowed"))
    image_size: int = Field(DEFAULT_IMAGE_SIZE, ge=8, description="side of the square network input, in pixels")
    loss: TrainingLoss = Field("bsm", description="Balanced Softmax (BSM-FL, FedMAS) or cross-entropy (FedAvg)")
    grad_clip_norm: float = Field(0.0, ge=0, description="clip the gradient norm to this value (0: off)")
    drop_last: bool = Field(True, description=(
        "drop each epoch's last incomplete training batch (true: the original's loader, shuffle=True, "
        "drop_last=True, §3.4); a training set no larger than one batch is never dropped"))


class SkinLesionExecutor(ClassificationExecutor):
    """Baseline client on a Fed-ISIC2019 centre: BSM-FL (``"loss": "bsm"``) or plain FedAvg (``"ce"``).

    Trains the received global model for ``local_epochs`` with the configured optimizer (Adam 3e-4 in the
    jobs; its state persists across rounds), optionally clipping the gradient norm. BSM uses this client's own
    class counts. Settings: :class:`ISIC2019Settings`.
    """

    Settings = ISIC2019Settings

    def build_datasets(self) -> Dict[str, Dataset]:
        """The centre's splits; also sets ``self.class_counts`` (training split), which the losses need."""
        folder = self.settings.path("data_root", self.site) / self.site
        if not folder.is_dir():
            raise DataError("no data folder for this client: client names must be the prepared centre folders "
                            "(center_0 ... center_5, see docs/fedmas.md)", path=folder, site=self.site)
        size = self.settings.image_size
        datasets = {split: SkinLesionDataset(folder / name, image_size=size, train=split == "training", site=self.site)
                    for split, name in SPLIT_FILES.items()}
        self.class_counts = datasets["training"].class_counts()
        return datasets

    def setup(self, fl_ctx: FLContext) -> None:
        super().setup(fl_ctx)
        if len(self.datasets[TESTING]) == 0:
            raise DataError("the 'testing' split is empty", site=self.site)
        self.n_classes = len(self.class_counts)
        self.test_loader = DataLoader(self.datasets[TESTING], batch_size=self.train_loader.batch_size)
        self.grad_clip_norm = self.settings.grad_clip_norm
        self.report: Dict[str, Any] = {}

    def score_name(self) -> str:
        return "balanced_accuracy"

    def build_loss(self) -> Callable:
        return classification_loss(self.settings.loss, self.class_counts, self.device)

    def samples_per_epoch(self) -> int:
        """Samples one local epoch sees (``drop_last`` rounds down): the original's FedAvg weight n_k."""
        loader = self.train_loader
        return len(loader) * loader.batch_size if loader.drop_last else len(loader.dataset)

    def load_payload(self, params: Params, fl_ctx: FLContext) -> None:
        super().load_payload(params, fl_ctx)
        self.report = {}

    def evaluate(self, split: str = VALIDATION) -> Dict[str, float]:
        """Balanced accuracy of the loaded model on ``split`` (returned) and on the test split (reported).

        The per-class counts of both go to the server in the reply's meta (:data:`CLASS_COUNTS`).
        """
        loaders = {VALIDATION: self.val_loader, TESTING: self.test_loader}
        counts, scores = {}, {}
        for name in dict.fromkeys((split, TESTING)):
            loader = loaders[name] if name in loaders else DataLoader(self.datasets[name], self.train_loader.batch_size)
            probabilities, labels = predict_probabilities(self.model, loader, self.device)
            correct, total = class_hits(labels, probabilities.argmax(axis=1), self.n_classes)
            counts[name] = {"correct": correct, "total": total}
            scores[name] = balanced_accuracy_from_counts(correct, total)
        self.report[CLASS_COUNTS] = counts
        self.log_metrics({"global": scores[TESTING]}, "test", self.current_round)
        return {"global": scores[split]}

    def train_step(self, model: torch.nn.Module, batch: Dict[str, torch.Tensor], loss_fn: Callable,
                   optimizer: torch.optim.Optimizer) -> torch.Tensor:
        """Forward, loss, backward, optional gradient-norm clipping, optimizer step."""
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(batch["image"]), batch["label"])
        self.apply_gradients(loss, model, optimizer)
        return loss.detach()

    def apply_gradients(self, loss: torch.Tensor, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        loss.backward()
        if self.grad_clip_norm > 0:
            clip_grad_norm_(model.parameters(), self.grad_clip_norm)
        optimizer.step()

    def result_meta(self, task_name: str) -> Dict[str, Any]:
        return {SAMPLES_PER_EPOCH: self.samples_per_epoch(), **self.report}
