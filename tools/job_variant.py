"""A copy of a job folder with some settings changed. The code is ``medfl.variant``; ``--help`` lists the options."""

import runpy

runpy.run_module("medfl.variant", run_name="__main__")
