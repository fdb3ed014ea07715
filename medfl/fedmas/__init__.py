"""FedMAS (Elbatel et al., MICCAI-W DeCaF 2023): federated aggregation via self-supervised priors.

What FedMAS adds to a federation's classification client (section numbers refer to the FedMAS specification
summarised in ``docs/fedmas.md``): the free-head network (``networks``, §3.2), the frozen MoCo-v2 prior
(``prior``) and its pre-training (``moco``, ``pretrain``), the local objective and divergence measurements
(``losses``, §3.4-3.5), and MAS client weights (``aggregation``, §3.5 (d)). The NVFlare client and server are
``executor`` and ``controller``; ``dermoscopy`` runs FedMAS on the dermoscopy federation.
"""
