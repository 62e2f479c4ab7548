"""Every ``python -m bench...`` command that README.md, docs/*.md or bench/README.md names
runs, as that command in a fresh process, in its smoke mode (seconds each), and prints its
table; a command added to the docs without a smoke run here fails the last test."""
import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", ROOT / "bench" / "README.md",
             *sorted((ROOT / "docs").glob("*.md"))]
# module: (smoke arguments, a line its output must hold, needs scikit-learn's digits)
SMOKE_RUNS = {
    "bench": (["--smoke", "--suite", "step,ops", "--out", "{tmp}"],
              r"Optimizer step", False),
    "bench.studies.backend_agreement": (["--smoke", "--device", "cpu"],
                                        r"\| tanh-fc \| 0\.0 \| foreach \|", True),
    "bench.studies.floor_choice": (["--smoke"], r"\| relu-fc, 40%, 0\.15 \|", True),
    "bench.studies.hvp_accuracy": (["--smoke"], r"vit1_patch4 +central +floor16", False),
    "bench.studies.fd_stability": (["--smoke"], r"vit-b64 +msassha +fd ", False),
    "bench.studies.fd_cost": (["--smoke", "--batches", "2"], r"msassha-fd over adamw: ", False),
    "bench.studies.draw_cost": (["--smoke"], r"\| 10,000 \| [\d.]+ \| [\d.]+ \|", False),
    "bench.studies.zero_curvature": (["--smoke"], r"- curvature_floor=0\.01: 0 of 2 seeds", False),
    "bench.studies.precheck_cost": (["--smoke"], r"\| 1,000 \| [\d.]+ \| [\d.]+ \| [\d.]+ \|",
                                    False),
    "bench.traffic": (["--numel", "4000"], r"M-SASSHA +skip +GradScaler +[\d.]+ +\d+", False),
    "bench.lm_suite": (["--profile", "smoke", "--methods", "sam-adamw,msassha-fd", "--lrs",
                        "1e-3", "--knobs", "rho=0.025", "--seeds", "2"],
                       r"\| msassha-fd \| 0\.001 rho 0\.025 \| \d\.\d{3} ± \d\.\d{3} \| 2 of 2 \|",
                       False),
    "bench.quality_suite": (["--profile", "smoke", "--methods", "sassha-fd,msassha-fd",
                             "--out", "{tmp}"], r"\| msassha-fd \|", True),
}


def documented_modules() -> set:
    found = set()
    for path in DOCUMENTS:
        found.update(re.findall(r"python -m (bench(?:\.[a-z_]+)*)", path.read_text()))
    return found


def test_the_documents_name_bench_commands():
    assert {"bench", "bench.studies.backend_agreement"} <= documented_modules()


def test_every_documented_bench_command_has_a_smoke_run():
    assert documented_modules() <= set(SMOKE_RUNS)


@pytest.mark.parametrize("module", list(SMOKE_RUNS))
def test_the_command_runs_in_smoke_mode(module, tmp_path):
    arguments, expected, needs_sklearn = SMOKE_RUNS[module]
    if needs_sklearn and importlib.util.find_spec("sklearn") is None:
        pytest.skip(f"{module} trains on scikit-learn's digits: scikit-learn is not installed")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
        OMP_NUM_THREADS="2")
    command = [sys.executable, "-m", module] + [a.format(tmp=tmp_path) for a in arguments]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stderr[-3000:]}"
    assert re.search(expected, done.stdout), done.stdout[-3000:]
