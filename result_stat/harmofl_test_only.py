"""Test metrics of a HarmoFL job's best global model with its amplitude reference. The code is
``medfl.harmofl.testing``; ``--help`` lists the options."""

import runpy

runpy.run_module("medfl.harmofl.testing", run_name="__main__")
