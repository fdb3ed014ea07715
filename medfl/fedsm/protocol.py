"""Names that FedSM's server, clients and moment filters all use."""

SITE_LABEL = "site_label"  # payload meta: the selector class of the receiving client's site
MOMENTS_NAME = "selector_adam"  # payload / result model name of the selector's synced Adam moments
# cross-site evaluation: the super model's parts and its routing threshold
SUPER_MODEL = "super"  # row name of the super model (selector + global + personalised models)
SELECTOR = "selector"
GLOBAL = "global"
PERSONAL_OF_LABEL = "personal_label_"  # + the selector class: a personalised model inside the super model's payload
SELECT_THRESHOLD = "select_threshold"  # task meta: the super model's routing threshold
