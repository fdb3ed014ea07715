"""medfl: federated learning methods for medical images, packaged as NVIDIA FLARE jobs.

Layers (arrows point down only): ``medfl.<method>`` (``fedavg``, ``fedsm``, ``harmofl``, ``prrfl``, ``fedmas``: only
what each method adds) -> ``medfl.federations.<name>`` (each federation's data, splits, transforms, baseline client
and network) -> ``medfl.common`` (the round loop on both sides, parameters, metrics, I/O, errors).
"""

__version__ = "0.5.0"
