"""Which lines of csrc/cuda/ the host emulation of the CUDA kernels executes under the
cuda_emulated tests (gcov line coverage; docs/backends.md). Run by hand on a copy that
scripts/emulation_faults.py has built (its --workdir):

    python scripts/emulation_coverage.py --workdir DIR [--tests PYTEST_ARGS]

It recompiles the emulation's three translation units with --coverage, relinks _C in DIR,
runs the tests there and prints, per file of csrc/cuda/, the executed and the executable
lines, then the executable lines never executed. DIR's _C keeps the instrumentation: rerun
emulation_faults.py (or setup.py) there to build it back.
"""
import argparse
import glob
import gzip
import json
import os
import shlex
import subprocess
import sys
import sysconfig
from collections import defaultdict
from pathlib import Path
from typing import Dict, Set, Tuple

from torch.utils import cpp_extension

DEFAULT_TESTS = ("tests/backends/test_cuda_emulated.py tests/backends/test_backend_ops.py "
                 "tests/backends/test_wrote_nonfinite.py tests/backends/test_backend_optimizer.py "
                 "-k cuda_emulated")
UNITS = ("fused_ops", "multi_tensor", "ops")


def instrument(workdir: Path) -> Path:
    """Recompiles the emulation with --coverage and relinks _C; returns its object folder."""
    objects = next(workdir.glob("build/temp.*/csrc")).parent
    includes = [f"-I{p}" for p in [str(workdir / "csrc" / "generated")]
                + cpp_extension.include_paths() + [sysconfig.get_paths()["include"]]]
    flags = ["-fPIC", "-std=c++20", "-fopenmp", "-O0", "--coverage", "-DNDEBUG",
             "-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=_C"]
    for unit in UNITS:
        out = objects / "csrc" / "cuda_emulation" / f"{unit}.o"
        for stale in out.parent.glob(f"{unit}.gc*"):
            stale.unlink()
        subprocess.run(["c++", *flags, *includes, "-c",
                        str(workdir / "csrc" / "cuda_emulation" / f"{unit}.cpp"), "-o", str(out)],
                       check=True)
    library = next((workdir / "sassha_fast").glob("_C.*.so"))
    torch_lib = os.path.join(os.path.dirname(cpp_extension.include_paths()[0]), "lib")
    subprocess.run(["c++", "-shared", *sorted(glob.glob(str(objects / "csrc" / "**" / "*.o"),
                                                        recursive=True)),
                    f"-L{torch_lib}", "-lc10", "-ltorch", "-ltorch_cpu", "-ltorch_python",
                    "-fopenmp", "--coverage", "-o", str(library)], check=True)
    return objects / "csrc" / "cuda_emulation"


def line_coverage(workdir: Path, objects: Path) -> Dict[str, Tuple[Set[int], Set[int]]]:
    """{file of csrc/cuda/: (executable lines, executed lines)} over the three units."""
    lines: Dict[str, Tuple[Set[int], Set[int]]] = defaultdict(lambda: (set(), set()))
    for unit in UNITS:
        subprocess.run(["gcov", "-j", "-o", str(objects), str(workdir / "csrc" / "cuda_emulation"
                                                              / f"{unit}.cpp")],
                       cwd=objects, check=True, capture_output=True)
        with gzip.open(objects / f"{unit}.gcov.json.gz") as f:
            report = json.load(f)
        for entry in report["files"]:
            path = os.path.realpath(os.path.join(workdir / "csrc" / "cuda_emulation",
                                                 entry["file"]))
            if os.path.dirname(path) != str((workdir / "csrc" / "cuda").resolve()):
                continue
            executable, executed = lines[os.path.basename(path)]
            for line in entry["lines"]:
                executable.add(line["line_number"])
                if line["count"] > 0:
                    executed.add(line["line_number"])
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--tests", default=DEFAULT_TESTS, help="pytest arguments")
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    objects = instrument(workdir)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           *shlex.split(args.tests)], cwd=workdir,
                          env=dict(os.environ, PYTHONPATH=str(workdir)), capture_output=True,
                          text=True)
    print("pytest:", done.stdout.strip().splitlines()[-1])
    total_executable = total_executed = 0
    never = []
    for name, (executable, executed) in sorted(line_coverage(workdir, objects).items()):
        total_executable += len(executable)
        total_executed += len(executed)
        print(f"{name}: {len(executed)} of {len(executable)} lines")
        never += [f"{name}:{n}" for n in sorted(executable - executed)]
    print(f"csrc/cuda/ under the emulation: {total_executed} of {total_executable} executable "
          f"lines ({100 * total_executed / max(total_executable, 1):.1f}%)")
    print("never executed:", " ".join(never))


if __name__ == "__main__":
    main()
