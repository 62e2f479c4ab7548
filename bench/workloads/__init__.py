"""What the methods run on: models, parameter sets and data. Imports nothing of bench."""
