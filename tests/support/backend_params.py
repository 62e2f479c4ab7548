"""Which (backend, device) pairs the parametrized tests run: every fused backend usable in
this process, on every device it supports, the test-only cuda_emulated (the CUDA kernels run
on the host) among them. An unusable backend is one skip whose reason is the backend's own
explanation."""
from typing import List

import pytest
import torch

from sassha_fast import available_backends
from sassha_fast.backends import BACKEND_MODULES, TEST_ONLY_MODULES, load_module
from sassha_fast.functional import resolve

FUSED_BACKENDS = [name for name in BACKEND_MODULES if name != "reference"] + list(TEST_ONLY_MODULES)


def devices() -> List[torch.device]:
    found = [torch.device("cpu")]
    if torch.cuda.is_available():
        found.append(torch.device("cuda"))
    return found


def backend_device_params(names=None, device_types=None) -> list:
    report = available_backends(test_only=True)
    params = []
    for name in names or FUSED_BACKENDS:
        if not report[name].available:
            params.append(pytest.param(name, None, id=name, marks=pytest.mark.skip(
                reason=f"backend {name!r} unavailable here: {report[name].reason}")))
            continue
        params += [pytest.param(name, device, id=f"{name}-{device.type}")
                   for device in devices() if load_module(name).supports(device)
                   and (device_types is None or device.type in device_types)]
    return params


def ops_for(backend, device, dtype):
    """The backend's ops for parameters of ``dtype``; a backend that does not run that
    dtype must refuse it by name (then the test is skipped, saying so)."""
    if not load_module(backend).supports_dtype(dtype):
        with pytest.raises(RuntimeError, match=f"{backend!r} does not run with {dtype}"):
            resolve(backend, device, dtype)
        pytest.skip(f"backend {backend!r} does not run {dtype} parameters (and refuses them)")
    return resolve(backend, device, dtype)
