"""scripts/gpu_check.sh (bash scripts/run.sh gpu-check) on a machine without a GPU: it says
so and exits 0 having run nothing (no build, no Python, no test, no results folder). On a
GPU it is run by hand; its report lands in bench/results/<gpu name>/gpu_check.md."""
import os
import pathlib
import shutil
import stat
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
MARKER = "ran-something"


def shim(folder: pathlib.Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def run_check(path_dirs):
    env = dict(os.environ, PATH=os.pathsep.join(map(str, path_dirs)))
    done = subprocess.run(["bash", str(REPO / "scripts" / "run.sh"), "gpu-check"], env=env,
                          capture_output=True, text=True, timeout=60)
    return done


@pytest.fixture
def spies(tmp_path):
    """Stand-ins for what a real check would start first: each leaves a marker if called."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for name in ("timeout", "python", "python3", "pip", "nvcc", "compute-sanitizer"):
        shim(folder, name, f"touch {tmp_path / MARKER}; exit 1")
    return folder


@pytest.mark.parametrize("nvidia_smi", ["reports-no-device", "absent"])
def test_without_a_gpu_it_says_so_and_runs_nothing(tmp_path, spies, nvidia_smi):
    if nvidia_smi == "reports-no-device":
        shim(spies, "nvidia-smi", "echo 'No devices were found'; exit 6")
    elif shutil.which("nvidia-smi"):
        pytest.skip("this machine has an nvidia-smi, which cannot be hidden from PATH here")
    results_before = sorted(p.name for p in (REPO / "bench" / "results").iterdir())
    done = run_check([spies] + os.environ["PATH"].split(os.pathsep))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "gpu-check: no NVIDIA GPU here (nvidia-smi finds none); " \
                                  "nothing was run"
    assert not (tmp_path / MARKER).exists()
    assert sorted(p.name for p in (REPO / "bench" / "results").iterdir()) == results_before
