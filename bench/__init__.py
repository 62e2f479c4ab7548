"""Benchmarks of sassha_fast against AdamW and SAM: ``python -m bench --help``."""
