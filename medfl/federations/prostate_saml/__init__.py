"""HarmoFL's six-site prostate MRI federation (the SAML release): 2.5-D slices and their augmentation."""
