"""Synthetic 3-site prostate MRI volumes for the demo federation. The code is ``medfl.federations.prostate2d.demo``;
``--help`` lists the options."""

import runpy

runpy.run_module("medfl.federations.prostate2d.demo", run_name="__main__")
