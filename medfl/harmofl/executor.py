"""HarmoFL clients: the amplitude exchange, amplitude-normalised inputs and weight-perturbed local steps.

:class:`HarmoFLClient` holds what HarmoFL adds to any client and plugs into the common executors through
their hooks (``execute`` for the two exchange tasks, ``train_step`` for the perturbed step): combine it with
:class:`~medfl.common.segmentation.SegmentationExecutor` (:class:`HarmoFLSegmentationExecutor`, prostate and
nuclei; :class:`HarmoFLSliceExecutor`, the 2D prostate federation's FedAvg client) or
:class:`~medfl.common.classification.ClassificationExecutor` (:class:`HarmoFLClassificationExecutor`, Camelyon17).
A task's data comes from :meth:`build_split`: :class:`HarmoFLProstateExecutor`, :class:`HarmoFLNucleiExecutor`,
:class:`HarmoFLCamelyon17Executor`, :class:`HarmoFLSliceExecutor`.

``config_train.json`` keys added by HarmoFL: :class:`HarmoFLOptions` (defaults: the released code's); the
``optimizer`` setting is the base optimizer the perturbation wraps, its state kept across rounds.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Dict, List, Literal, Mapping, Optional

import numpy as np
import torch
from pydantic import Field
from torch.utils.data import DataLoader, Dataset, Subset

from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.utils.fl_model_utils import FLModelUtils

from medfl.common.classification import ClassificationExecutor, ClassificationSettings
from medfl.common.data import datalist_path, read_datalist
from medfl.common.errors import DataError
from medfl.common.executor import RoundExecutor
from medfl.common.metrics import classification_metrics, predict_probabilities
from medfl.common.protocol import NUM_TRAIN_SAMPLES
from medfl.common.segmentation import SegmentationExecutor
from medfl.common.settings import ClientSettings, Settings
from medfl.common.train import Batch, build_optimizer, evaluate_dice
from medfl.federations.camelyon17.data import Camelyon17Dataset
from medfl.federations.nuclei.data import NucleiDataset
from medfl.federations.prostate2d.client import ProstateSegmentationExecutor, ProstateSettings
from medfl.federations.prostate_saml.data import prostate_dataset, prostate_train_augmentation

from . import networks  # noqa: F401  (registers harmofl_unet, harmofl_densenet121)
from .amp_norm import DEFAULT_AMPLITUDE_MODE, MAX_WINDOW_RATIO, AmplitudeNormalize, mean_amplitude, normalize_inputs
from .amplitude_exchange import (
    AMPLITUDE_KEY,
    AMPLITUDE_TASK,
    DIGEST_KEY,
    MIN_TRAIN_SAMPLES,
    REFERENCE_TASK,
    amplitude_digest,
    amplitude_normalizer,
)
from .losses import harmofl_segmentation_loss, segmentation_dice_scores
from .weight_perturbation import DEFAULT_ALPHA, WeightPerturbationOptimizer, weight_perturbation_step


class HarmoFLOptions(Settings):
    """What HarmoFL adds to a client's ``config_train.json`` (defaults: the released code's)."""

    amplitude_mode: Literal["paper", "reference_code"] = Field(DEFAULT_AMPLITUDE_MODE, description=(
        "amplitude normalisation as the paper describes it or as the released code computes it (amp_norm)"))
    amplitude_window_ratio: Optional[float] = Field(None, gt=0, le=MAX_WINDOW_RATIO, description=(
        "share of the spectrum normalised around its centre (null: the mode's)"))
    amplitude_momentum: Optional[float] = Field(None, ge=0, le=1, description=(
        "running-mean momentum of the local amplitude (null: the mode's)"))
    perturbation_alpha: float = Field(DEFAULT_ALPHA, ge=0, le=1, description="weight-perturbation radius rho")
    truncate_to_smallest_client: bool = Field(True, description=(
        "train every client on its first min_k n_k training samples, as the released code unless --imbalance"))


class HarmoFLSegmentationSettings(HarmoFLOptions, ClientSettings):
    """A HarmoFL segmentation client (prostate, nuclei): HarmoFL's options, the common keys and its data."""

    data_root: str = Field(description="folder of the site's prepared images; DATASET_ROOT allowed")
    datalist: str = Field(description="a datalist file, or a folder holding <client>.json; DATASET_ROOT allowed")
    augment: bool = Field(True, description="the released code's random rotations and flips of training samples")
    val_metric: Literal["dice_bg_fg", "dice_fg"] = Field("dice_bg_fg", description=(
        "validation metric reported as 'global': the released mean Dice of both classes, or the foreground's"))


class HarmoFLNucleiSettings(HarmoFLSegmentationSettings):
    """HarmoFL nuclei client: the segmentation keys and the nuclei images' shape and intensity."""

    patch_size: Optional[int] = Field(None, ge=8, description=(
        "P x P random training crops and validation/test tiles (null: whole images, which must share one size)"))
    channels: int = Field(3, ge=1, le=4, description="channels the network sees (grey images are repeated)")
    intensity: Literal["dtype", "minmax"] = Field("dtype", description=(
        "to [0, 1] by the image dtype's range, or by each image's min and max"))


class HarmoFLSliceSettings(HarmoFLOptions, ProstateSettings):
    """HarmoFL on the 2D prostate federation: its options and the prostate client's keys."""


class HarmoFLClassificationSettings(HarmoFLOptions, ClassificationSettings):
    """A HarmoFL classification client: its options and the classification keys."""


class HarmoFLCamelyon17Settings(HarmoFLClassificationSettings):
    """HarmoFL Camelyon17 client: the classification keys and the patches."""

    data_root: str = Field(description="the WILDS camelyon17_v1.0 folder; DATASET_ROOT allowed")
    datalist: str = Field(description="a datalist file, or a folder holding <client>.json; DATASET_ROOT allowed")


class HarmoFLClient(RoundExecutor):
    """HarmoFL's client side (Jiang et al., AAAI 2022), mixed into a common executor.

    * Task ``amplitude_task``: reply ``{"amplitude": (C, *spatial)}``, this client's mean amplitude spectrum of
      its training images (mode from config), and nothing else.
    * Task ``reference_task``: freeze the server's averaged amplitude as the reference of an
      :class:`~medfl.harmofl.amp_norm.AmplitudeNormalize` applied to every input of the networks from
      :meth:`harmofl_models` (a forward pre-hook: training, validation and test); reply its SHA-256.
      Training or validation before a reference is frozen is refused.
    * Each local step is weight-perturbed (:func:`~medfl.harmofl.weight_perturbation.weight_perturbation_step`)
      around the base optimizer from :meth:`wrap_optimizer`.

    Args:
        amplitude_task / reference_task: task names of the exchange (the server's controller sends them).
        **kwargs: see :class:`~medfl.common.executor.RoundExecutor`.
    """

    def __init__(self, amplitude_task: str = AMPLITUDE_TASK, reference_task: str = REFERENCE_TASK, **kwargs):
        super().__init__(**kwargs)
        self.amplitude_task = amplitude_task
        self.reference_task = reference_task
        self.normalizer: AmplitudeNormalize | None = None
        self.reference_digest = ""

    @abstractmethod
    def build_split(self, split: str) -> Dataset:
        """The ``{"image", "label"}`` dataset of ``split`` (``training`` augmented) from ``self.settings``."""

    @abstractmethod
    def harmofl_models(self) -> List[torch.nn.Module]:
        """The networks whose inputs are amplitude-normalised."""

    @abstractmethod
    def score(self, model: torch.nn.Module, loader: DataLoader) -> Dict[str, float]:
        """Metrics of ``model`` on ``loader`` (validation here, testing in ``result_stat``)."""

    def task_names(self) -> List[str]:
        return [self.amplitude_task, self.reference_task, *super().task_names()]

    def wrap_optimizer(self, base: torch.optim.Optimizer) -> WeightPerturbationOptimizer:
        """The weight-perturbation optimizer (radius ``perturbation_alpha``) around ``base``."""
        return WeightPerturbationOptimizer(base, alpha=self.settings.perturbation_alpha)

    def train_step(self, model: torch.nn.Module, batch: Batch, loss_fn, optimizer) -> torch.Tensor:
        return weight_perturbation_step(model, batch, loss_fn, optimizer)

    # ------------------------------------------------------------------ the amplitude exchange
    def local_amplitude(self) -> np.ndarray:
        """``(C, *spatial)`` float32 mean amplitude of the training images as they enter the network."""
        batches = (batch["image"].to(self.device) for batch in self.train_loader)
        amplitude = mean_amplitude(batches, mode=self.settings.amplitude_mode,
                                   momentum=self.settings.amplitude_momentum)
        return amplitude.float().cpu().numpy()

    def freeze_reference(self, params: Mapping[str, np.ndarray], meta: Mapping) -> str:
        """Freeze the server's reference amplitude (idempotent for the same array); return its digest."""
        if set(params) != {AMPLITUDE_KEY}:
            raise DataError(f"the reference task must hold exactly {{'{AMPLITUDE_KEY}'}}, got {sorted(params)}",
                            site=self.site)
        reference = np.asarray(params[AMPLITUDE_KEY], dtype=np.float32)
        digest = amplitude_digest(reference)
        if self.normalizer is not None:
            if digest != self.reference_digest:
                raise DataError("a different amplitude reference arrived after one was frozen", site=self.site)
            return digest
        image_shape = tuple(self.datasets["training"][0]["image"].shape)
        if reference.shape != image_shape:
            raise DataError(f"the reference amplitude has shape {reference.shape} but this site's images are "
                            f"{image_shape}: every site must prepare its images at one size", site=self.site)
        self.normalizer = amplitude_normalizer(self.settings, reference)
        for model in self.harmofl_models():
            normalize_inputs(model, self.normalizer)
        self.reference_digest = digest
        if self.settings.truncate_to_smallest_client and MIN_TRAIN_SAMPLES in meta:
            self.truncate_training(int(meta[MIN_TRAIN_SAMPLES]))
        return digest

    def truncate_training(self, size: int) -> None:
        """Keep the first ``size`` training samples (the released ``min_data_len`` subset)."""
        dataset = self.datasets["training"]
        if size >= len(dataset):
            return
        self.datasets["training"] = Subset(dataset, range(size))
        self.train_loader = self.truncated_loader(self.train_loader)

    def truncated_loader(self, old: DataLoader) -> DataLoader:
        """The training loader over the truncated ``datasets["training"]``, otherwise as ``old``."""
        size = len(self.datasets["training"])
        return DataLoader(self.datasets["training"], batch_size=old.batch_size, shuffle=True,
                          drop_last=old.drop_last and size > old.batch_size)

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        if task_name not in (self.amplitude_task, self.reference_task):
            if self.normalizer is None and not self._setup_error:
                self.log_error(fl_ctx, f"[{self.site}] cannot run task {task_name}: no amplitude reference was frozen; "
                                       f"the server must run the HarmoFL amplitude exchange first (HarmoFLController)")
                return make_reply(ReturnCode.EXECUTION_EXCEPTION)
            return super().execute(task_name, shareable, fl_ctx, abort_signal)
        if self._setup_error:
            self.log_error(fl_ctx, f"cannot run task {task_name}: {self._setup_error}")
            return make_reply(ReturnCode.EXECUTION_EXCEPTION)
        try:
            if task_name == self.amplitude_task:
                amplitude = self.local_amplitude()
                self.log_info(fl_ctx, f"sending the mean amplitude {amplitude.shape} of "
                                      f"{self.num_samples('training')} training images")
                reply = FLModel(params={AMPLITUDE_KEY: amplitude},
                                meta={NUM_TRAIN_SAMPLES: self.num_samples("training")})
            else:
                received = FLModelUtils.from_shareable(shareable)
                digest = self.freeze_reference(received.params or {}, received.meta or {})
                self.log_info(fl_ctx, f"froze the amplitude reference sha256={digest}; training on "
                                      f"{self.num_samples('training')} samples")
                reply = FLModel(params={}, meta={DIGEST_KEY: digest})
            return FLModelUtils.to_shareable(reply)
        except DataError as e:
            self.log_error(fl_ctx, f"[{self.site}] task {task_name}: {e}")
            return make_reply(ReturnCode.EXECUTION_EXCEPTION)


class HarmoFLSegmentationExecutor(HarmoFLClient, SegmentationExecutor):
    """HarmoFL segmentation client: softmax network, CE + Dice (the released ``JointLoss``), weight-perturbed
    base optimizer (Adam 1e-4, weight decay 1e-4 for prostate). Validation reports ``dice_bg_fg`` (the
    released metric) and ``dice_fg``; ``val_metric`` picks the one reported as ``global`` (best model).

    ``config_train.json``: the HarmoFL keys (module docstring), ``network``, ``local_epochs``, ``batch_size``
    (training and evaluation: the networks' BatchNorm uses batch statistics), ``augment``, ``val_metric``.
    """

    Settings = HarmoFLSegmentationSettings
    model_names = ("global",)

    def setup(self, fl_ctx: FLContext) -> None:
        self.datasets = {split: self.build_split(split) for split in ("training", "validation")}
        batch_size = self.settings.batch_size
        self.train_loader = DataLoader(self.datasets["training"], batch_size=batch_size, shuffle=True)
        self.val_loader = DataLoader(self.datasets["validation"], batch_size=batch_size)
        self.loss_fn = harmofl_segmentation_loss()
        self.val_metric = self.settings.val_metric
        self.models = {name: self.build_model(name).to(self.device) for name in self.model_names}
        self.optimizers = {name: self.wrap_optimizer(build_optimizer(model.parameters(), self.settings.optimizer))
                           for name, model in self.models.items()}

    def harmofl_models(self) -> List[torch.nn.Module]:
        return list(self.models.values())

    def score(self, model: torch.nn.Module, loader: DataLoader) -> Dict[str, float]:
        return segmentation_dice_scores(model, loader, self.device)

    def score_name(self) -> str:
        return self.val_metric

    def evaluate(self, split: str = "validation") -> Dict[str, float]:
        loader = self.val_loader if split == "validation" else DataLoader(self.build_split(split),
                                                                          batch_size=self.val_loader.batch_size)
        scores = self.score(self.models["global"], loader)
        return {"global": scores[self.val_metric], **scores}


class HarmoFLProstateExecutor(HarmoFLSegmentationExecutor):
    """HarmoFL prostate MRI client: 2.5-D samples from ``prepare_harmofl_prostate.py`` (``data_root``,
    ``datalist`` = a folder of ``<client>.json`` or one file)."""

    def build_split(self, split: str) -> Dataset:
        base_dir = self.settings.path("data_root", self.site)
        datalist = datalist_path(self.settings.path("datalist", self.site), self.site)
        augment = split == "training" and self.settings.augment
        return prostate_dataset(read_datalist(datalist, split, self.site), base_dir, self.site, augment=augment)


class HarmoFLNucleiExecutor(HarmoFLSegmentationExecutor):
    """HarmoFL nuclei client: the per-site layout of ``prepare_nuclei.py`` (``data_root``, ``datalist``).

    Every site must feed the network one image size (one amplitude reference): ``patch_size`` P serves random
    P x P crops for training and the P x P tiles covering each image for validation and testing (``null``:
    whole images, which must then share one size). ``channels`` and ``intensity`` as in
    :class:`~medfl.federations.nuclei.data.NucleiDataset`; ``augment``: the prostate task's rotations and flips.
    """

    Settings = HarmoFLNucleiSettings

    def build_split(self, split: str) -> Dataset:
        datalist = datalist_path(self.settings.path("datalist", self.site), self.site)
        training = split == "training"
        patch_size = self.settings.patch_size
        augment = prostate_train_augmentation() if training and self.settings.augment else None
        base_dir = self.settings.path("data_root", self.site)
        return NucleiDataset(read_datalist(datalist, split, self.site), base_dir, self.site,
                             channels=self.settings.channels, intensity=self.settings.intensity,
                             patch_size=patch_size,
                             random_crop=training and patch_size is not None, transform=augment)


class HarmoFLSliceExecutor(HarmoFLClient, ProstateSegmentationExecutor):
    """HarmoFL on the common 2D prostate slices (``jobs/harmofl_prostate_2d``): FedAvg's prostate client
    (:class:`~medfl.federations.prostate2d.client.ProstateSegmentationExecutor`: its network, ``DiceLoss(sigmoid)``, Adam from
    ``optimizer``, ``batch_size``, augmentation, validation by foreground Dice) plus HarmoFL's amplitude
    exchange, amplitude-normalised inputs and weight-perturbed Adam steps, so that HarmoFL is compared with
    FedAvg and FedSM on the same data with the same model.

    ``config_train.json``: the prostate client's keys and the HarmoFL keys
    of the module docstring. :meth:`score` reports ``dice_fg`` (foreground Dice).
    """

    Settings = HarmoFLSliceSettings
    build_split = ProstateSegmentationExecutor.build_split  # the federation's slices (abstract in HarmoFLClient)

    def setup(self, fl_ctx: FLContext) -> None:
        super().setup(fl_ctx)
        self.optimizers = {name: self.wrap_optimizer(optimizer) for name, optimizer in self.optimizers.items()}

    def harmofl_models(self) -> List[torch.nn.Module]:
        return list(self.models.values())

    def score(self, model: torch.nn.Module, loader: DataLoader) -> Dict[str, float]:
        return {"dice_fg": evaluate_dice(model, loader, self.device)}


class HarmoFLClassificationExecutor(HarmoFLClient, ClassificationExecutor):
    """HarmoFL classification client (Camelyon17: SGD 1e-3, momentum 0.9, weight decay 1e-4, batch 128, CE,
    accuracy): the common classification client with HarmoFL's exchange, normalisation and perturbed step.
    Subclasses provide :meth:`build_split` (:class:`HarmoFLCamelyon17Executor`).
    """

    Settings = HarmoFLClassificationSettings

    def build_datasets(self) -> Dict[str, Dataset]:
        return {split: self.build_split(split) for split in ("training", "validation")}

    def setup(self, fl_ctx: FLContext) -> None:
        super().setup(fl_ctx)
        self.optimizer = self.wrap_optimizer(self.optimizer)

    def harmofl_models(self) -> List[torch.nn.Module]:
        return [self.model]

    def truncated_loader(self, old: DataLoader) -> DataLoader:
        return self.training_loader(self.datasets["training"])  # the last batch kept unless drop_last

    def score(self, model: torch.nn.Module, loader: DataLoader) -> Dict[str, float]:
        probabilities, labels = predict_probabilities(model, loader, self.device)
        return classification_metrics(labels, probabilities)


class HarmoFLCamelyon17Executor(HarmoFLClassificationExecutor):
    """HarmoFL Camelyon17 client: 96 x 96 patches of the WILDS layout (``data_root``) and the datalists of
    ``prepare_camelyon17.py`` (``datalist``); ``ToTensor()`` only, no augmentation, as the released code."""

    Settings = HarmoFLCamelyon17Settings

    def build_split(self, split: str) -> Dataset:
        datalist = datalist_path(self.settings.path("datalist", self.site), self.site)
        return Camelyon17Dataset(read_datalist(datalist, split, self.site), self.settings.path("data_root", self.site),
                                 self.site)
