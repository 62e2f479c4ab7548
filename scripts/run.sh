#!/usr/bin/env bash
# One entry point for a fresh machine: creates .venv (torch 2.14.1), builds sassha_fast in
# editable mode with its extras (the test and benchmark tools), then runs the named job.
#   bash scripts/run.sh bench [bench options]   the benchmark suite (python -m bench)
#   bash scripts/run.sh test  [pytest options]  the test suite
#   bash scripts/run.sh build                   only create .venv and build
#   bash scripts/run.sh gpu-check               verify a GPU (scripts/gpu_check.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
job="${1:-}"; shift || true
case "$job" in
  bench|test|build) ;;
  gpu-check) exec bash scripts/gpu_check.sh "$@" ;;  # it checks for a GPU before building
  *) echo "usage: bash scripts/run.sh {bench|test|build|gpu-check} [options]" >&2; exit 2 ;;
esac

PY=.venv/bin/python
if [ ! -x "$PY" ]; then
  python3 -m venv .venv
fi
# This machine's local package index lists locations it lacks; pip warns for each.
quiet() { "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; }

# pip builds an editable install from scratch every time, so (re)install only when the
# dependencies or the compiled sources changed; the Python sources are picked up live.
torch_pin="torch==${SASSHA_TORCH_VERSION:-2.14.1}"
stamp=.venv/.sassha_build_stamp
sources_hash=$( (echo "$torch_pin arch=${TORCH_CUDA_ARCH_LIST:-} cuda=${SASSHA_FAST_NO_CUDA:-}"
  cat setup.py pyproject.toml $(find csrc triton_kernels -type f \
  \( -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh' -o -name '*.inc' \) \
  -not -path 'csrc/generated/*' | sort)) | sha256sum | cut -c1-64)
if [ "$(cat "$stamp" 2>/dev/null)" != "$sources_hash" ] || ! "$PY" -c "import sassha_fast._C" 2>/dev/null; then
  # --no-build-isolation builds against the torch installed here and installs no build
  # requirements itself: torch and pyproject.toml's other [build-system] requires come first.
  build_requirements=$("$PY" -c '
try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    from pip._vendor import tomli as tomllib
with open("pyproject.toml", "rb") as f:
    print(" ".join(r for r in tomllib.load(f)["build-system"]["requires"]
                   if not r.startswith("torch")))')
  quiet "$PY" -m pip install -q "$torch_pin" $build_requirements
  echo "building sassha_fast (log: .venv/build.log)"
  # The extras hold the one list of the test and benchmark tools and of the frameworks the
  # integrations are tested against (pyproject.toml); the torch pin keeps them from
  # replacing the torch installed above.
  if ! MAX_JOBS="${MAX_JOBS:-$(nproc)}" "$PY" -m pip install -v --no-build-isolation \
      -e ".[triton,test,bench,integrations]" "$torch_pin" > .venv/build.log 2>&1; then
    tail -n 60 .venv/build.log >&2
    echo "sassha_fast failed to build" >&2
    exit 1
  fi
  grep "sassha_fast build:" .venv/build.log || true
  echo "$sources_hash" > "$stamp"
fi
"$PY" -c "import sassha_fast; print('sassha_fast backends:'); [print(f'  {k}: {v}') for k, v in sassha_fast.available_backends().items()]"

case "$job" in
  build) ;;
  bench) exec "$PY" -m bench "$@" ;;
  test)  exec "$PY" -m pytest tests "$@" ;;
esac
