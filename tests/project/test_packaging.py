"""The package as a user gets it: a source distribution that holds every source the build
uses; a wheel built from it that installs into clean virtual environments and runs an
optimizer step with the cpu backend; and an extension built against another torch, which
is not loaded.

One sdist and one compile serve every test: ``pip install <sdist>`` is ``pip wheel <sdist>``
followed by the install of that wheel, so the wheel is built once (CPU-only, to keep this
quick) in a clean environment and installed both there (the sdist's route) and into another
one (a wheel carried to a second environment with the same torch). The environments are
``python -m venv`` ones that see the installed torch through a .pth file (no copy of torch).
"""
import json
import os
import pathlib
import subprocess
import sys
import tarfile

import pytest
import torch

from conftest import REPO
from sassha_fast.backends import extension

TORCH_SITE = pathlib.Path(torch.__file__).resolve().parents[1]

# The wheel's build compiles _C once (about 4 CPU-minutes); on a machine shared with other
# jobs that can take several times the suite's default limit per test.
pytestmark = pytest.mark.timeout(2400)

# Run in each environment: one step of SASSHA on the backend named in argv[1], checked
# against the reference backend; prints what the test inspects.
STEP_SCRIPT = r"""
import json, sys, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import torch
    import sassha_fast

def one_step(backend):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    x, y = torch.randn(32, 8), torch.randn(32, 1)
    opt = sassha_fast.SASSHA(model.parameters(), lr=0.1, backend=backend)
    opt.step(lambda: torch.nn.functional.mse_loss(model(x), y))
    return opt, torch.cat([p.detach().flatten() for p in model.parameters()])

opt, stepped = one_step(sys.argv[1])
_, reference = one_step("reference")
torch.manual_seed(0)
initial = torch.cat([p.detach().flatten() for p in torch.nn.Sequential(
    torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).parameters()])
print(json.dumps({
    "file": sassha_fast.__file__,
    "version": sassha_fast.__version__,
    "build_info": sassha_fast.build_info(),
    "backends": {name: a.reason for name, a in sassha_fast.available_backends().items()},
    "in_use": opt.backends_in_use,
    "moved": (stepped - initial).abs().max().item(),
    "off_reference": (stepped - reference).abs().max().item(),
    "extension_imported": "sassha_fast._C" in sys.modules,
    "warnings": [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)],
}))
"""


def run(command, cwd):
    """Runs ``command`` with the environment of a user outside this repository: no
    PYTHONPATH pointing at the sources, and a CPU-only build."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(SASSHA_FAST_NO_CUDA="1", MAX_JOBS=env.get("MAX_JOBS", str(os.cpu_count() or 1)),
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    done = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, (f"{' '.join(map(str, command))} failed:\n"
                                  f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return done.stdout


def clean_venv(path: pathlib.Path) -> pathlib.Path:
    """A new venv, without sassha_fast, that sees the installed torch (and pip, setuptools,
    ninja beside it) through a .pth file; its python."""
    run([sys.executable, "-m", "venv", "--without-pip", path], cwd=path.parent)
    python = path / "bin" / "python"
    site = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
               cwd=path).strip()
    (pathlib.Path(site) / "shared_torch.pth").write_text(f"{TORCH_SITE}\n")
    return python


def pip_install(python: pathlib.Path, wheel: pathlib.Path) -> None:
    # --ignore-installed: the environment behind the .pth may hold a sassha_fast of the same
    # version (this repository's editable install), which must neither count nor be touched.
    run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--no-cache-dir",
         "--ignore-installed", wheel], cwd=python.parent)


def step(python: pathlib.Path, backend: str) -> dict:
    """STEP_SCRIPT's report, run from outside the repository."""
    return json.loads(run([python, "-c", STEP_SCRIPT, backend], cwd=python.parent).strip()
                      .splitlines()[-1])


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("sdist")
    run([sys.executable, "-c",
         "import sys; from setuptools import build_meta; build_meta.build_sdist(sys.argv[1])",
         out], cwd=REPO)
    (archive,) = out.glob("sassha_fast-*.tar.gz")
    return archive


@pytest.fixture(scope="module")
def built(sdist, tmp_path_factory):
    """(the venv that built the wheel from the sdist, its python; the wheel)."""
    root = tmp_path_factory.mktemp("build_env")
    python = clean_venv(root / "venv")
    wheels = root / "wheels"
    run([python, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "--no-index",
         "--no-cache-dir", "-w", wheels, sdist], cwd=root)
    (wheel,) = wheels.glob("sassha_fast-*.whl")
    return python, wheel


def sources_the_build_uses():
    """Every file the build or the installed package can use, relative to the repository."""
    wanted = {"README.md", "pyproject.toml", "setup.py", "MANIFEST.in"}
    for top, suffixes in (("csrc", (".cpp", ".cu", ".h", ".cuh", ".inc")),
                          ("sassha_fast", (".py",)), ("triton_kernels", (".py",))):
        for directory, subdirs, files in os.walk(REPO / top):  # symlinks are not followed
            subdirs[:] = [d for d in subdirs if d not in ("generated", "__pycache__")]
            wanted.update(str((pathlib.Path(directory) / f).relative_to(REPO)) for f in files
                          if f.endswith(suffixes) and f != "_build_config.py")
    return wanted


def test_the_sdist_holds_every_source_the_build_uses(sdist):
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    wanted = sources_the_build_uses()
    assert {"csrc/cpu/kernels.inc", "csrc/cuda/multi_tensor.cuh",
            "triton_kernels/kernels.py"} <= wanted  # the walk above found the sources
    assert not wanted - names, f"missing from the sdist: {sorted(wanted - names)}"
    generated = [n for n in names if n.endswith((".so", "_build_config.py"))
                 or n.startswith("csrc/generated")]
    assert not generated, f"build products in the sdist: {generated}"


def test_the_sdist_builds_a_wheel_that_installs_and_steps_on_the_cpu_backend(built):
    python, wheel = built
    pip_install(python, wheel)
    report = step(python, "cpu")
    assert pathlib.Path(report["file"]).is_relative_to(python.parents[1])
    assert report["version"] == extension.__version__
    assert report["in_use"] == {"cpu": "cpu"}
    assert report["moved"] > 1e-3 and report["off_reference"] < 1e-5, report
    info = report["build_info"]
    assert info["extension"] == "loaded" and info["built_with_torch"] == torch.__version__
    assert info["cuda_part"] == "skipped: SASSHA_FAST_NO_CUDA=1" and info["cuda_targets"] == []
    assert info["cpu_isas"][-1] == "generic"
    assert report["warnings"] == []


def test_the_wheel_installs_into_another_environment(built, tmp_path):
    _, wheel = built
    python = clean_venv(tmp_path / "venv")
    pip_install(python, wheel)
    report = step(python, "cpu")
    assert pathlib.Path(report["file"]).is_relative_to(tmp_path)
    assert report["in_use"] == {"cpu": "cpu"} and report["off_reference"] < 1e-5, report


def test_an_extension_built_against_another_torch_is_not_loaded(built, tmp_path):
    _, wheel = built
    python = clean_venv(tmp_path / "venv")
    pip_install(python, wheel)
    (record,) = tmp_path.glob("venv/lib/python*/site-packages/sassha_fast/_build_config.py")
    text = record.read_text()
    assert f"TORCH_VERSION = {torch.__version__!r}" in text
    record.write_text(text.replace(repr(torch.__version__), "'2.3.0'"))

    report = step(python, "auto")
    assert not report["extension_imported"]
    for backend in ("cpu", "cuda"):
        reason = report["backends"][backend]
        assert f"built against torch 2.3.0, but torch {torch.__version__} is running" in reason
        assert "pip install --no-build-isolation" in reason
    assert report["backends"]["reference"] == report["backends"]["foreach"] == "available"
    assert report["in_use"] == {"cpu": "foreach"} and report["off_reference"] < 1e-5, report
    assert report["build_info"]["extension"] == report["backends"]["cpu"]
    assert len(report["warnings"]) == 1 and "2.3.0" in report["warnings"][0]


@pytest.mark.parametrize("built_torch, built_cuda, targets, running_torch, running_cuda, why", [
    ("2.14.1+cu130", "13.0", [], "2.14.1+cpu", None, None),
    ("2.14.1+cu130", "13.0", ["sm_90"], "2.14.1+cu130", "13.0", None),
    ("2.14.0", None, [], "2.14.1", None, "built against torch 2.14.0, but torch 2.14.1"),
    ("2.14.1+cu130", "13.0", ["sm_90"], "2.14.1+cpu", None, "(a CPU-only build) is running"),
    ("2.14.1+cu130", "13.0", ["sm_90"], "2.14.1+cu126", "12.6", "(CUDA 12.6) is running"),
])
def test_which_torch_builds_an_extension_can_load_under(built_torch, built_cuda, targets,
                                                         running_torch, running_cuda, why):
    """Another release never matches; the same release in another variant matches unless
    the extension has a CUDA part built for another CUDA (or the torch has none)."""
    found = extension.torch_mismatch(built_torch, built_cuda, targets, running_torch,
                                     running_cuda)
    assert found == why if why is None else why in found
