"""Camelyon17 (WILDS patches, five hospitals): HarmoFL's histology federation."""
