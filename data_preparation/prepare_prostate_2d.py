"""3D prostate MRI volumes to the 2D slices and case-level datalists of the prostate federation. The code is
``medfl.federations.prostate2d.preparation``; ``--help`` lists the options."""

import runpy

runpy.run_module("medfl.federations.prostate2d.preparation", run_name="__main__")
