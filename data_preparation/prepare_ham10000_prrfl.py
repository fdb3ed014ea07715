"""HAM10000 to PRR-FL's dermoscopy federation (four acquisition sources, three classes). The code is
``medfl.federations.dermoscopy.preparation``; ``--help`` lists the options."""

import runpy

runpy.run_module("medfl.federations.dermoscopy.preparation", run_name="__main__")
