"""ISIC 2019 / HAM10000 to Fed-ISIC2019 centre folders. The code is ``medfl.federations.isic2019.preparation``;
``--help`` lists the options."""

import runpy

runpy.run_module("medfl.federations.isic2019.preparation", run_name="__main__")
