"""What the suites and studies share to measure and record: the profiles, timing, progress,
the run's metadata, the traffic model, result rows, the training protocol and the choice
of backends. Imports nothing of bench but ``workloads`` (the profiles name their sets and
models)."""
