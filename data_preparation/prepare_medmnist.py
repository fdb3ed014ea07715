"""MedMNIST npz to per-client LDA partitions. The code is ``medfl.federations.medmnist.preparation``; ``--help`` lists
the options."""

import runpy

runpy.run_module("medfl.federations.medmnist.preparation", run_name="__main__")
