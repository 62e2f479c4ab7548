"""What sassha_fast is measured against beside torch's optimizers: SAM as usually written,
and the authors' SASSHA and M-SASSHA from a checkout. Imports nothing of bench."""
