"""HarmoFL (Jiang et al., AAAI 2022): amplitude normalisation, weight perturbation, networks and losses.

The NVFlare parts live in ``medfl.harmofl.executor`` (clients) and ``medfl.harmofl.controller`` (server).
"""

from .amp_norm import (
    AMPLITUDE_MODES,
    DEFAULT_AMPLITUDE_MODE,
    AmplitudeAverager,
    AmplitudeNormalize,
    AmplitudeNormalized,
    amplitude_spectrum,
    mean_amplitude,
    normalize_inputs,
)
from .losses import harmofl_dice_metric, harmofl_segmentation_loss, segmentation_dice_scores
from .networks import build_harmofl_network
from .weight_perturbation import WeightPerturbationOptimizer, perturbed_training_step, weight_perturbation_step

__all__ = [
    "AMPLITUDE_MODES",
    "DEFAULT_AMPLITUDE_MODE",
    "AmplitudeAverager",
    "AmplitudeNormalize",
    "AmplitudeNormalized",
    "WeightPerturbationOptimizer",
    "amplitude_spectrum",
    "build_harmofl_network",
    "harmofl_dice_metric",
    "harmofl_segmentation_loss",
    "mean_amplitude",
    "normalize_inputs",
    "perturbed_training_step",
    "segmentation_dice_scores",
    "weight_perturbation_step",
]
