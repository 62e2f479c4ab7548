"""Proof that the CUDA kernels' emulated tests can fail: breaks the kernel source in ways such
kernels break (docs/backends.md, "cuda_emulated"), rebuilds the host emulation and runs the
tests of backend cuda_emulated against each fault. A fault is caught when some test fails;
the unbroken source must pass first (the faulted runs stop at the first failure). Too slow
for CI (a rebuild per fault): run by hand

    python scripts/emulation_faults.py [--workdir DIR] [--tests PYTEST_ARGS]

It works on a copy of the checkout (DIR, kept between runs so that only the emulation's
translation units are recompiled) and never touches the checkout's sources. Prints one line
per fault and exits non-zero if one is missed.
"""
import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, NamedTuple, Optional

ROOT = Path(__file__).resolve().parents[1]
KERNEL = "csrc/cuda/multi_tensor.cuh"
DEFAULT_TESTS = ("tests/backends/test_cuda_emulated.py "
                 "tests/backends/test_backend_ops.py -k cuda_emulated")


class Fault(NamedTuple):
    what: str
    path: str
    old: str
    new: str


FAULTS: Dict[str, Fault] = {
    "chunk-end-off-by-one": Fault(
        "a chunk ends one element early", KERNEL,
        "args.numel[slot] : begin + kChunk;", "args.numel[slot] : begin + kChunk - 1;"),
    "vector-path-when-misaligned": Fault(
        "only the first list's alignment decides the vector path", KERNEL,
        "for (int d = 0; d < Depth; ++d) aligned &=", "for (int d = 0; d < 1; ++d) aligned &="),
    "dropped-scalar-tail": Fault(
        "an aligned tensor's elements after its last whole vector are skipped", KERNEL,
        "      op.template apply<kVec>(coeffs, ptrs, i, sum);\n    }\n",
        "      op.template apply<kVec>(coeffs, ptrs, i, sum);\n    }\n    singles_begin = end;\n"),
    "partial-sum-wrong-slot": Fault(
        "a block's partial sum goes to its slot within the launch, not within the op", KERNEL,
        "partial_sums[args.first_block + blockIdx.x] = sum;",
        "partial_sums[blockIdx.x] = sum;"),
    "block-sum-drops-a-warp": Fault(
        "the block reduction leaves out the last warp's total", KERNEL,
        "v = threadIdx.x < kWarps ? warp_sums[threadIdx.x] : 0.f;",
        "v = threadIdx.x < kWarps - 1 ? warp_sums[threadIdx.x] : 0.f;"),
}


def copy_checkout(workdir: Path) -> None:
    """The checkout's tracked and untracked (not ignored) files into workdir, links as links;
    the build outputs already in workdir stay."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                            check=True, capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, listed):
        source, target = ROOT / name, workdir / name
        if name == ".venv" or not (source.exists() or source.is_symlink()):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            if target.is_symlink() or target.exists():
                target.unlink()
            target.symlink_to(os.readlink(source))
        elif not target.exists() or target.read_bytes() != source.read_bytes():
            shutil.copy2(source, target)  # unchanged files keep their time: no rebuild


def build(workdir: Path) -> float:
    start = time.time()
    env = dict(os.environ, SASSHA_FAST_NO_CUDA="1", MAX_JOBS=os.environ.get("MAX_JOBS", "1"))
    done = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=workdir,
                          env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"build failed in {workdir}:\n{done.stderr[-3000:]}")
    return time.time() - start


def first_failure(workdir: Path, tests: str, stop_at_first: bool) -> Optional[str]:
    """The first failing test's line of pytest's summary, or None when all pass."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfE", "-p",
                           "no:cacheprovider", *(["-x"] if stop_at_first else []),
                           *shlex.split(tests)], cwd=workdir,
                          env=dict(os.environ, PYTHONPATH=str(workdir)),
                          capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    print(f"    pytest: {lines[-1] if lines else done.stderr[-500:]}", flush=True)
    if done.returncode not in (0, 1):
        sys.exit(f"pytest could not run the tests:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    failed = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    return failed[0][:300] if failed else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="the copy to build in (default: a new "
                        "temporary directory)")
    parser.add_argument("--tests", default=DEFAULT_TESTS, help="pytest arguments")
    parser.add_argument("--only", nargs="*", choices=sorted(FAULTS), help="these faults only")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sassha_faults_"))
    workdir.mkdir(parents=True, exist_ok=True)
    copy_checkout(workdir)
    print(f"copy in {workdir}; unbroken source: built in {build(workdir):.0f} s", flush=True)
    if first_failure(workdir, args.tests, stop_at_first=False):
        sys.exit("the unbroken source fails its tests: no fault can be judged")
    missed = []
    for name in args.only or FAULTS:
        fault = FAULTS[name]
        path = workdir / fault.path
        pristine = (ROOT / fault.path).read_text()
        assert pristine.count(fault.old) == 1, f"{name}: the code it breaks has changed"
        path.write_text(pristine.replace(fault.old, fault.new))
        try:
            seconds = build(workdir)
            failure = first_failure(workdir, args.tests, stop_at_first=True)
        finally:
            path.write_text(pristine)
        print(f"{name} ({fault.what}): rebuilt in {seconds:.0f} s, "
              + (f"CAUGHT, first by {failure}" if failure else "MISSED"), flush=True)
        if not failure:
            missed.append(name)
    build(workdir)  # the copy back to the unbroken source, for the next run
    sys.exit(f"missed: {', '.join(missed)}" if missed else 0)


if __name__ == "__main__":
    main()
