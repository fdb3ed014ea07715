"""Balanced accuracy tables of FedMAS vs BSM-FL vs FedAvg on Fed-ISIC2019. The code is ``medfl.fedmas.results``;
``--help`` lists the options."""

import runpy

runpy.run_module("medfl.fedmas.results", run_name="__main__")
