"""Per-site nuclei images and masks to datalists. The code is ``medfl.federations.nuclei.preparation``; ``--help``
lists the options."""

import runpy

runpy.run_module("medfl.federations.nuclei.preparation", run_name="__main__")
