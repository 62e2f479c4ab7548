"""How runs are written and printed: tables, plots, the issue summary and each suite's
files. Imports nothing of bench but harness."""
