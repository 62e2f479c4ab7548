#!/usr/bin/env bash
# One entry point for a fresh machine: creates .venv (torch 2.14.1 and the dev tools),
# builds sassha_fast in editable mode, then runs the named job.
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
if ! "$PY" -c "import torch, numpy, ninja, pytest, pytest_timeout, matplotlib, pytest_benchmark, sklearn" 2>/dev/null; then
  # This machine's local package index lists locations it lacks; pip warns for each.
  quiet() { "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; }
  quiet "$PY" -m pip install -q "torch==${SASSHA_TORCH_VERSION:-2.14.1}"
  quiet "$PY" -m pip install -q -r requirements-dev.txt
fi

# pip builds an editable install from scratch every time, so rebuild only when the compiled
# sources changed; the Python sources are picked up live.
stamp=.venv/.sassha_build_stamp
sources_hash=$( (echo "arch=${TORCH_CUDA_ARCH_LIST:-} cuda=${SASSHA_FAST_NO_CUDA:-}"; cat setup.py $(find csrc triton_kernels -type f \( -name '*.cpp' -o -name '*.cu' \
  -o -name '*.h' -o -name '*.cuh' -o -name '*.inc' \) -not -path 'csrc/generated/*' | sort)) | sha256sum | cut -c1-64)
if [ "$(cat "$stamp" 2>/dev/null)" != "$sources_hash" ] || ! "$PY" -c "import sassha_fast._C" 2>/dev/null; then
  echo "building sassha_fast (log: .venv/build.log)"
  if ! MAX_JOBS="${MAX_JOBS:-$(nproc)}" "$PY" -m pip install -v --no-build-isolation -e . \
      > .venv/build.log 2>&1; then
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
