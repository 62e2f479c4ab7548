"""Data parallelism: averaging what DDP cannot, and DTensor (FSDP2) parameters."""
