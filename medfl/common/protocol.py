"""Names that every server and client use in the meta of a task result."""

NUM_TRAIN_SAMPLES = "num_train_samples"  # training examples behind the update (FedAvg's n_k)
NUM_TRAIN_STEPS = "num_train_steps"  # local optimizer steps of one model this round (NVFlare's NUM_STEPS_CURRENT_ROUND)
NUM_VAL_SAMPLES = "num_val_samples"  # validation examples behind the reported metrics (best-model weights)

# cross-site evaluation (RoundController.evaluate_cross_site): the task's meta and the reply's meta
CROSS_SITE_SPLIT = "cross_site_split"  # the split every site evaluates the final models on ("testing")
CROSS_SITE_METRIC = "cross_site_metric"  # the name of the score a site reports (its federation's metric)
NUM_EVAL_SAMPLES = "num_eval_samples"  # examples behind a site's cross-site scores

# A client's sign of life: an aux message of this topic every HEARTBEAT_INTERVAL seconds for the whole run, so that
# the server tells a slow client (still sending) from a dead one (silent), in the simulator too (medfl.common.liveness)
HEARTBEAT_TOPIC = "medfl.heartbeat"
HEARTBEAT_INTERVAL = 10.0  # seconds

# Exact resume (medfl.common.client_state): in the meta of every task the server sends
RUN_ID = "medfl_run_id"  # the run's id (32 hex digits), the same in a resumed run; names the clients' state folders
RESUME_ROUND = "medfl_resume_round"  # only in a resumed run: the last round the client trained in (-1: none), whose
# saved state it restores once, before its first task of the resumed run
