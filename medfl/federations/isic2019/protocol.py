"""Names that the Fed-ISIC2019 server and clients both use (result meta entries)."""

# {split: {"correct": [...], "total": [...]}} of the received model on the validation and test splits
CLASS_COUNTS = "class_counts"
SAMPLES_PER_EPOCH = "samples_per_epoch"  # the original's n_k = len(train_loader) * batch_size
