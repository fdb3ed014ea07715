"""MoCo-v2 pre-training of FedMAS's self-supervised prior. The code is ``medfl.fedmas.pretrain``; ``--help`` lists the
options."""

import runpy

runpy.run_module("medfl.fedmas.pretrain", run_name="__main__")
