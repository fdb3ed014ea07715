"""Four demo nuclei sites tiled from one real DSB2018 image. The code is ``medfl.federations.nuclei.demo``; ``--help``
lists the options."""

import runpy

runpy.run_module("medfl.federations.nuclei.demo", run_name="__main__")
