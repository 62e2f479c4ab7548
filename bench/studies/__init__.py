"""Self-contained measurements, each a command (``python -m bench.studies.<name>``) that
prints its tables: they import harness, workloads and the method catalog, never another
study."""
