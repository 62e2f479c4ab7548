"""setup.py's handling of the CUDA part: the targets it names in the build log, and the
fallback to a CPU-only extension when the CUDA part fails to compile (checked with a fake
compiler, not a rebuild)."""
import importlib.util
import os

import pytest
from setuptools import Distribution, Extension

from conftest import REPO

ARCH_FLAGS = ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=compute_90",
              "-gencode=arch=compute_90,code=sm_90"]


@pytest.fixture
def setup_py(monkeypatch, tmp_path):
    """setup.py as a module (its setup() call only runs as __main__), writing its build
    status header under tmp_path; the environment it edits is restored afterwards."""
    saved_environment = dict(os.environ)
    spec = importlib.util.spec_from_file_location("sassha_setup", REPO / "setup.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.chdir(REPO)
    try:
        spec.loader.exec_module(module)
    finally:
        os.environ.clear()
        os.environ.update(saved_environment)
    monkeypatch.setattr(module, "GENERATED_DIR", str(tmp_path))
    return module


def build_status(setup_py) -> str:
    with open(os.path.join(setup_py.GENERATED_DIR, "build_status.h")) as f:
        return f.read()


def test_default_arch_list_gives_sm_80_and_sm_90_with_ptx(setup_py, monkeypatch):
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", setup_py.DEFAULT_CUDA_ARCHS)
    assert sorted(setup_py.cuda_arch_flags()) == ARCH_FLAGS
    assert setup_py.describe_arch_flags(ARCH_FLAGS) == "sm_80, sm_90 (+PTX compute_90)"


def test_targets_are_named_in_numeric_order(setup_py):
    flags = ["-gencode=arch=compute_100,code=sm_100", "-gencode=arch=compute_90a,code=sm_90a",
             "-gencode=arch=compute_86,code=sm_86"]
    assert setup_py.describe_arch_flags(flags) == "sm_86, sm_90a, sm_100"


def test_an_unknown_arch_list_skips_the_cuda_part_with_the_reason(setup_py, monkeypatch):
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "4.2")
    monkeypatch.delenv("SASSHA_FAST_NO_CUDA", raising=False)
    problem = setup_py.cuda_problem()
    if not problem.startswith("skipped: TORCH_CUDA_ARCH_LIST"):
        pytest.skip(f"the CUDA part is skipped here before its arch list is read: {problem}")
    assert "'4.2'" in problem and "Unknown CUDA arch" in problem


def test_a_cuda_compile_failure_falls_back_to_the_cpu_part(setup_py, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", setup_py.DEFAULT_CUDA_ARCHS)
    compiled = []

    def fake_compile(self, ext):
        if any(source.endswith(".cu") for source in ext.sources):
            raise RuntimeError("nvcc: error in fused_ops.cu")
        compiled.append(list(ext.sources))

    monkeypatch.setattr(setup_py.cpp_extension.BuildExtension, "build_extension", fake_compile)
    ext = Extension("sassha_fast._C", setup_py.CPU_SOURCES + ["csrc/cuda/fused_ops.cu"],
                    define_macros=[("SASSHA_WITH_CUDA", None)])
    ext.with_cuda = True
    setup_py.BuildWithOptionalCuda(Distribution()).build_extension(ext)

    assert compiled == [setup_py.CPU_SOURCES]
    assert ("SASSHA_WITH_CUDA", None) not in ext.define_macros
    log = capsys.readouterr().err
    assert "sassha_fast build: CUDA part FAILED to compile (nvcc: error in fused_ops.cu)" in log
    assert '"failed to compile: nvcc: error in fused_ops.cu"' in build_status(setup_py)
    assert ext.cuda_targets == [] and ext.cuda_status.startswith("failed to compile: nvcc")


def test_a_successful_build_logs_and_records_its_targets(setup_py, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", setup_py.DEFAULT_CUDA_ARCHS)
    monkeypatch.setattr(setup_py.cpp_extension.BuildExtension, "build_extension",
                        lambda self, ext: None)
    ext = Extension("sassha_fast._C", setup_py.CPU_SOURCES + ["csrc/cuda/fused_ops.cu"])
    ext.with_cuda = True
    setup_py.BuildWithOptionalCuda(Distribution()).build_extension(ext)
    assert ("sassha_fast build: CUDA part built for sm_80, sm_90 (+PTX compute_90)"
            in capsys.readouterr().err)
    assert '"built for sm_80, sm_90 (+PTX compute_90)"' in build_status(setup_py)
    assert ext.cuda_targets == ["sm_80", "sm_90", "compute_90"]


def test_the_build_config_records_the_torch_and_the_targets(setup_py, tmp_path):
    """What sassha_fast compares with the running torch before it loads _C."""
    ext = Extension("sassha_fast._C", [])
    ext.cuda_status, ext.cuda_targets = "built for sm_90", ["sm_90"]
    setup_py.write_build_config(str(tmp_path / "pkg"), ext)
    recorded = {}
    exec((tmp_path / "pkg" / "_build_config.py").read_text(), recorded)
    assert recorded["TORCH_VERSION"] == setup_py.torch.__version__
    assert recorded["TORCH_CUDA_VERSION"] == setup_py.torch.version.cuda
    assert (recorded["CUDA_PART"], recorded["CUDA_TARGETS"]) == ("built for sm_90", ["sm_90"])
    assert recorded["CPU_ISAS"][-1] == "generic"
