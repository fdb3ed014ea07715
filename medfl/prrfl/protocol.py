"""Names that PRR-FL's server and clients both use (payload keys and meta entries)."""

DEPUTY = "deputy"  # payload model: the deputy without BatchNorm (the personalised model never travels)
# result meta: validation metrics after local training; task meta: the round whose personalised models are best
TRAINED_METRICS = "trained_metrics"
BEST_PERSONAL_ROUND = "best_personal_round"
BEST_PERSONAL_SCORE = "best_personal_score"
# cross-site evaluation: the task on which each client sends its personalised model (only then does it travel)
SUBMIT_PERSONAL_TASK = "submit_personal"
PERSONAL = "personal"  # result model name of a submitted personalised model (its full state, BatchNorm included)
