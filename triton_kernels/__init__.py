"""Triton kernels of the "triton" backend (installed as sassha_fast.triton_kernels)."""
