"""Synthetic H&E-like patches in the Camelyon17 (WILDS) layout. The code is ``medfl.federations.camelyon17.demo``;
``--help`` lists the options."""

import runpy

runpy.run_module("medfl.federations.camelyon17.demo", run_name="__main__")
