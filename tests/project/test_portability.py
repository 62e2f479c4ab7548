"""The tests that compare with recorded files, on other processors without a second machine:
they run again in fresh processes with torch's kernels (ATEN_CPU_CAPABILITY) and the cpu
backend's kernels (SASSHA_FAST_CPU_ISA) forced down to what an AVX2-only machine and a machine
without AVX2 would run. The files were recorded on one processor; these runs show that their
tolerances hold where the model's forward and backward and the fused kernels take other code
paths (docs/development.md, "Testing")."""
import os
import platform
import re
import subprocess
import sys

import pytest
import torch

from conftest import REPO

# Every test comparing with a recorded file, and the cpu backend's instruction-set builds.
RECORDED_DATA_TESTS = [
    "tests/optim/test_golden.py",
    "tests/optim/test_lm.py",
    "tests/backends/test_backend_cpu.py::test_each_cap_runs_the_best_build_this_cpu_supports",
    "tests/backends/test_backend_cpu.py::test_a_vector_build_agrees_with_the_generic_build",
    "tests/backends/test_backend_cpu.py::test_the_avx512_and_avx2_builds_agree_exactly",
]
# Not the triton backend's replays: Triton's interpreter computes in NumPy, which neither
# variable changes, and the model's drift reaches it as it reaches the other backends. They
# take half the time of these runs (the budget: ~3 minutes for both on an idle 2-core machine).
DESELECT = "not triton"
# Lowest first, as torch.backends.cpu.get_cpu_capability() names them on x86-64.
TORCH_LEVELS = ["default", "avx2", "avx512"]
SASSHA_LEVELS = ["generic", "avx2", "avx512"]
MACHINES = {
    "avx2-only": dict(ATEN_CPU_CAPABILITY="avx2", SASSHA_FAST_CPU_ISA="avx2"),
    "without-avx2": dict(ATEN_CPU_CAPABILITY="default", SASSHA_FAST_CPU_ISA="generic"),
}
X86 = platform.machine().lower() in ("x86_64", "amd64")


def lower(levels, a: str, b: str) -> str:
    return levels[min(levels.index(a), levels.index(b))]


@pytest.mark.skipif(not X86, reason="the forced instruction sets are x86-64's")
@pytest.mark.parametrize("machine", MACHINES)
def test_recorded_data_tests_pass_with_kernels_forced_down(machine):
    forced = MACHINES[machine]
    env = dict(os.environ, **forced)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", *RECORDED_DATA_TESTS, "-k", DESELECT,
         "-p", "no:cacheprovider", "--tb=short", "-rs"],
        cwd=REPO, env=env, capture_output=True, text=True)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"under {forced}:\n{output[-12_000:]}"
    # The forcing took effect (conftest.py's report header), as far as this CPU allows.
    reported = re.search(r"CPU kernels: torch (\w+), sassha_fast cpu backend (\w+)", output)
    assert reported, output[-2_000:]
    native_torch = torch.backends.cpu.get_cpu_capability().lower()
    assert reported[1] == lower(TORCH_LEVELS, forced["ATEN_CPU_CAPABILITY"], native_torch)
    if reported[2] != "unavailable":
        assert SASSHA_LEVELS.index(reported[2]) <= \
            SASSHA_LEVELS.index(forced["SASSHA_FAST_CPU_ISA"])
    assert re.search(r"\d+ passed", output), output[-2_000:]
