"""Test Dice of the prostate models: FedSM's super model and the global model. The code is ``medfl.fedsm.testing``;
``--help`` lists the options."""

import runpy

runpy.run_module("medfl.fedsm.testing", run_name="__main__")
