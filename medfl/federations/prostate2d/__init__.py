"""The 2D prostate MRI federation of FedSM (I2CVB, MSD, NCI-ISBI 3T): slice preparation, demo data, client."""
