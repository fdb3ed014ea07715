"""PRR-FL vs FedAvg on the dermoscopy federation: test metrics and retrogress curves. The code is
``medfl.prrfl.results``; ``--help`` lists the options."""

import runpy

runpy.run_module("medfl.prrfl.results", run_name="__main__")
