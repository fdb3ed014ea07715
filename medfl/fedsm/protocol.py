"""Names that FedSM's server, clients and moment filters all use."""

SITE_LABEL = "site_label"  # payload meta: the selector class of the receiving client's site
MOMENTS_NAME = "selector_adam"  # payload / result model name of the selector's synced Adam moments
