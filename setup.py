"""Builds sassha_fast and its extension sassha_fast._C.

The C++ CPU part of _C is always built. Its CUDA part is added when this torch is a CUDA
build and a CUDA toolkit (nvcc) is found; if that part fails to compile, _C is rebuilt
without it and the reason is reported, so the install never fails because of CUDA.
Environment: TORCH_CUDA_ARCH_LIST (default "8.0;9.0+PTX"), SASSHA_FAST_NO_CUDA=1 to skip
the CUDA part, MAX_JOBS for parallel compilation, CUDA_HOME to pick a toolkit.
The build log's lines starting with "sassha_fast build:" say what was built, naming the
GPU targets passed to nvcc (e.g. "CUDA part built for sm_80, sm_90 (+PTX compute_90)").
The same facts, and the torch version built against, are written next to _C as
sassha_fast/_build_config.py, which sassha_fast checks before it loads _C.
The project's metadata is in pyproject.toml.
"""
import glob
import os
import platform
import re
import shutil
import subprocess
import sys
from typing import List, Optional

from setuptools import setup


def find_cuda_home() -> Optional[str]:
    """The toolkit's root: $CUDA_HOME / $CUDA_PATH, else asked of the nvcc on PATH (which
    may be a wrapper script outside the toolkit, so its own path proves nothing)."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    try:
        dryrun = subprocess.run([nvcc, "--dryrun", "-c", "x.cu"], capture_output=True,
                                text=True, timeout=60).stderr
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"^#\$ TOP=(.+)$", dryrun, re.MULTILINE)
    return os.path.realpath(match.group(1).strip()) if match else None


# torch reads CUDA_HOME once, when cpp_extension is imported.
if find_cuda_home() and not os.environ.get("CUDA_HOME"):
    os.environ["CUDA_HOME"] = find_cuda_home()

import torch  # noqa: E402
from torch.utils import cpp_extension  # noqa: E402

DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"
# csrc/cuda_emulation/ is the CUDA sources compiled for the host (a test-only emulation of
# the kernels, csrc/cuda/host_emulation.h), built everywhere so that CI runs them.
CPU_SOURCES = (["csrc/module.cpp", "csrc/schema.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
               + sorted(glob.glob("csrc/cuda_emulation/*.cpp")))
CUDA_SOURCES = sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda/*.cpp"))
CXX_FLAGS = ["-O3", "-fopenmp"]
NVCC_FLAGS = ["-O3", "-lineinfo"]
GENERATED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "generated")
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)


def log(message: str) -> None:
    print(f"sassha_fast build: {message}", file=sys.stderr, flush=True)


def cuda_arch_flags() -> List[str]:
    """nvcc's -gencode flags for TORCH_CUDA_ARCH_LIST, derived as torch derives them. They
    are passed to nvcc explicitly (torch then adds none), so the log names what was built."""
    return cpp_extension._get_cuda_arch_flags()


def arch_codes(flags: List[str]) -> List[str]:
    """["sm_80", "sm_90", "compute_90"] for the matching -gencode flags: in numeric order,
    machine code before PTX."""
    return sorted((flag.rsplit("code=", 1)[-1] for flag in flags),
                  key=lambda code: (int(re.sub(r"\D", "", code)), code.startswith("compute_")))


def describe_arch_flags(flags: List[str]) -> str:
    """"sm_80, sm_90 (+PTX compute_90)" for the matching -gencode flags."""
    codes = arch_codes(flags)
    machine = [code for code in codes if code.startswith("sm_")]
    ptx = [code for code in codes if code.startswith("compute_")]
    return (", ".join(machine) or "no machine code") + (f" (+PTX {', '.join(ptx)})" if ptx else "")


def cuda_problem() -> Optional[str]:
    """Why the CUDA part cannot be built here, or None."""
    if os.environ.get("SASSHA_FAST_NO_CUDA") == "1":
        return "skipped: SASSHA_FAST_NO_CUDA=1"
    if torch.version.cuda is None:
        return f"skipped: torch {torch.__version__} is not a CUDA build"
    if cpp_extension.CUDA_HOME is None:
        return "skipped: no CUDA toolkit found (set CUDA_HOME or put nvcc on PATH)"
    if not os.path.exists(os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc")):
        return f"skipped: no nvcc under CUDA_HOME={cpp_extension.CUDA_HOME}"
    if not CUDA_SOURCES:
        return "skipped: no CUDA sources in csrc/cuda"
    try:
        cuda_arch_flags()
    except ValueError as exc:
        return f"skipped: TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']!r}: {exc}"
    return None


def cuda_wheel_include_dirs() -> List[str]:
    """Headers of the CUDA libraries that PyTorch's wheels bring (cuBLAS, cuSPARSE...),
    which a minimal toolkit lacks and ATen's CUDA headers include."""
    try:
        import nvidia  # namespace package of NVIDIA's wheels
    except ImportError:
        return []
    return sorted({os.path.dirname(header)
                   for root in nvidia.__path__
                   for header in glob.glob(os.path.join(root, "*", "include", "cublas_v2.h"))
                   + glob.glob(os.path.join(root, "*", "include", "cusparse.h"))})


def cpu_extension():
    return cpp_extension.CppExtension(
        "sassha_fast._C", CPU_SOURCES, include_dirs=[GENERATED_DIR],
        extra_compile_args={"cxx": CXX_FLAGS}, extra_link_args=["-fopenmp"])


def cuda_extension():
    return cpp_extension.CUDAExtension(
        "sassha_fast._C", CPU_SOURCES + CUDA_SOURCES,
        include_dirs=[GENERATED_DIR] + cuda_wheel_include_dirs(),
        define_macros=[("SASSHA_WITH_CUDA", None)],
        extra_compile_args={"cxx": CXX_FLAGS, "nvcc": NVCC_FLAGS + cuda_arch_flags()},
        extra_link_args=["-fopenmp"])


def write_build_status(cuda_status: str) -> None:
    """Compiles the CUDA part's status into _C (``sassha_fast._C.cuda_status``), so that
    ``available_backends()`` can say why the cuda backend is missing."""
    os.makedirs(GENERATED_DIR, exist_ok=True)
    text = cuda_status.replace("\\", "/").replace('"', "'").replace("\n", " ")[:500]
    content = f'#pragma once\n#define SASSHA_CUDA_STATUS "{text}"\n'
    path = os.path.join(GENERATED_DIR, "build_status.h")
    if os.path.exists(path) and open(path).read() == content:
        return  # rewritten, it would make ninja recompile module.cpp at every build
    with open(path, "w") as f:
        f.write(content)


def cpu_isas() -> List[str]:
    """The instruction sets the CPU kernels are compiled for, best first: csrc/cpu/kernels.h
    adds the AVX-512 and AVX2 builds on x86-64; the best the CPU has is picked at run time."""
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    return ["avx512", "avx2", "generic"] if x86 else ["generic"]


def write_build_config(package_dir: str, ext) -> None:
    """Records what _C was built against and for in <package_dir>/_build_config.py, which
    sassha_fast reads before it loads _C (to refuse an extension built for another torch)."""
    facts = {
        "TORCH_VERSION": torch.__version__,
        "TORCH_CUDA_VERSION": torch.version.cuda,
        "CUDA_PART": ext.cuda_status,
        "CUDA_TARGETS": ext.cuda_targets,
        "CPU_ISAS": cpu_isas(),
    }
    os.makedirs(package_dir, exist_ok=True)
    with open(os.path.join(package_dir, "_build_config.py"), "w") as f:
        f.write("# Written by setup.py when sassha_fast._C was built.\n")
        f.writelines(f"{name} = {value!r}\n" for name, value in facts.items())


class BuildWithOptionalCuda(cpp_extension.BuildExtension):
    def run(self):
        super().run()
        for ext in self.extensions:  # next to _C: the build tree, or the sources when in place
            write_build_config(os.path.dirname(self.get_ext_fullpath(ext.name)), ext)

    def build_extension(self, ext):
        ext.cuda_targets = []
        if not getattr(ext, "with_cuda", False):
            log(f"CUDA part {cuda_problem()}; building the CPU part only")
            ext.cuda_status = cuda_problem()
            write_build_status(ext.cuda_status)
            return super().build_extension(ext)
        archs = describe_arch_flags(cuda_arch_flags())
        ext.cuda_status = f"built for {archs}"
        write_build_status(ext.cuda_status)
        try:
            super().build_extension(ext)
            ext.cuda_targets = arch_codes(cuda_arch_flags())
            log(f"CUDA part built for {archs}")
        except Exception as exc:  # the CPU part must still install
            log(f"CUDA part FAILED to compile ({exc}); building the CPU part only")
            ext.cuda_status = f"failed to compile: {exc}"
            write_build_status(ext.cuda_status)
            # Same Extension object (setuptools has annotated it), CPU-only contents.
            for attr, value in vars(cpu_extension()).items():
                if not attr.startswith("_"):
                    setattr(ext, attr, value)
            super().build_extension(ext)


def extensions():
    if cuda_problem() is None:
        ext = cuda_extension()
        ext.with_cuda = True
        return [ext]
    return [cpu_extension()]


if __name__ == "__main__":  # tests import this file to check the CUDA fallback
    setup(
        ext_modules=extensions(),
        cmdclass={"build_ext": BuildWithOptionalCuda.with_options(use_ninja=True)},
    )
