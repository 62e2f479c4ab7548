"""What sassha_fast is measured against beside torch's optimizers: SAM as usually written,
Sophia-H and AdaHessian written from their papers (sharing Hutchinson's estimate,
hutchinson.py), and the authors' SASSHA and M-SASSHA from a checkout. Imports nothing of
bench."""
