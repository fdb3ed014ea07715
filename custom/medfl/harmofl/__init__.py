"""HarmoFL (Jiang et al., AAAI 2022): amplitude normalisation, weight perturbation, networks and losses."""

from .amp_norm import (
    AMPLITUDE_MODES,
    DEFAULT_AMPLITUDE_MODE,
    AmplitudeAverager,
    AmplitudeNormalize,
    AmplitudeNormalized,
    amplitude_spectrum,
    mean_amplitude,
)
from .losses import harmofl_dice_metric, harmofl_segmentation_loss
from .networks import build_harmofl_network
from .weight_perturbation import WeightPerturbationOptimizer, perturbed_training_step

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
    "perturbed_training_step",
]
