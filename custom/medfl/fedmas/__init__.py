"""FedMAS (Elbatel et al., MICCAI-W DeCaF 2023): federated aggregation via self-supervised priors.

Pure building blocks (no NVFlare): the free-head ResNet (``networks``), the frozen MoCo-v2 prior (``prior``),
MoCo-v2 pre-training (``moco``), Balanced Softmax and divergence measurements (``losses``), MAS client
weights (``aggregation``) and the Fed-ISIC2019 dataset (``data``). Section numbers refer to
``docs/ALGORITHMS.md`` §3.
"""

from .aggregation import (
    AGGREGATION_METHODS,
    aggregation_weights,
    drw_weights,
    mas_weights,
    robust_factor,
    sample_weights,
    weighted_average,
)
from .data import ISIC_CLASSES, SkinLesionDataset, eval_transform, read_datalist, train_transform
from .losses import BalancedSoftmaxLoss, ClassDivergence, FedMASLoss, prior_divergence
from .networks import FreeHeadResNet, resnet_trunk, trunk_features
from .prior import FrozenPrior, checkpoint_sha256, load_moco_prior

__all__ = [
    "AGGREGATION_METHODS",
    "ISIC_CLASSES",
    "BalancedSoftmaxLoss",
    "ClassDivergence",
    "FedMASLoss",
    "FreeHeadResNet",
    "FrozenPrior",
    "SkinLesionDataset",
    "aggregation_weights",
    "checkpoint_sha256",
    "drw_weights",
    "eval_transform",
    "load_moco_prior",
    "mas_weights",
    "prior_divergence",
    "read_datalist",
    "resnet_trunk",
    "robust_factor",
    "sample_weights",
    "train_transform",
    "trunk_features",
    "weighted_average",
]
