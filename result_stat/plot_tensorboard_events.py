"""Validation curves of a simulator workspace as a PNG. The code is ``medfl.common.curves``; ``--help`` lists the
options."""

import runpy

runpy.run_module("medfl.common.curves", run_name="__main__")
