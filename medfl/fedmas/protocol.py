"""Names that FedMAS's server and clients both use (payload and result meta entries)."""

AGGREGATION = "aggregation"  # payload meta: the server's aggregation rule (avg, mas, mas_inv, mas_DRW)
ROBUST_FACTOR = "robust_factor"  # result meta: r_k of §3.5 (c)
PRIOR_SHA256 = "prior_sha256"  # result meta: the digest of the client's prior checkpoint
