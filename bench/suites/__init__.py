"""The suites of ``python -m bench``: step, ops, train (with its worker process), quality
and lm. They import harness, workloads, baselines and the method catalog
(``bench/methods.py``), never output or studies."""
