"""Federations: each one's data (readers, splits, transforms, preparation), its baseline client and network.

One sub-package per federation, so that every method on it gets the same data from one place: ``prostate2d``
(FedSM / FedAvg: 2D T2 MRI slices of I2CVB, MSD, NCI-ISBI), ``prostate_saml`` (HarmoFL's six SAML sites),
``camelyon17`` and ``nuclei`` (HarmoFL), ``dermoscopy`` (HAM10000 by acquisition source: PRR-FL), ``isic2019``
(Fed-ISIC2019: FedMAS) and ``medmnist`` (the MedMNIST FedAvg tutorial). A federation imports only ``medfl.common``.
"""
