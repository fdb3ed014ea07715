"""Nuclei segmentation federation (HarmoFL): per-site image and mask folders, tiled patches."""
