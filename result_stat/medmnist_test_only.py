"""Test accuracy and AUC of a MedMNIST job's checkpoints. The code is ``medfl.federations.medmnist.testing``;
``--help`` lists the options."""

import runpy

runpy.run_module("medfl.federations.medmnist.testing", run_name="__main__")
