"""What happens around an update: counters on the host or the device, the inf/NaN check
and skip record, GradScaler support, BatchNorm freezing, diagnostics, errors, and
checkpoints of the authors' code."""
