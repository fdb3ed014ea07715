"""Camelyon17 (WILDS) patches to per-hospital datalists. The code is ``medfl.federations.camelyon17.preparation``;
``--help`` lists the options."""

import runpy

runpy.run_module("medfl.federations.camelyon17.preparation", run_name="__main__")
