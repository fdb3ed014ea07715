"""HarmoFL (Jiang et al., AAAI 2022): amplitude normalisation, weight perturbation, networks and losses."""
