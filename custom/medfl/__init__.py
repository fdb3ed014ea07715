"""medfl: federated learning methods for medical images, packaged as NVIDIA FLARE jobs.

One package, one ``common`` layer (data, training loop, metrics, checkpointing, NVFlare executor and
controller bases) and one sub-package per method (``fedavg``, ``fedsm``, ``harmofl``, ``prrfl``, ``fedmas``).
"""
