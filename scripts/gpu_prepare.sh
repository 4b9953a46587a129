#!/usr/bin/env bash
# CPU machine: the carried bundle (.gpu/bundle) and the CPU half of the comparison (.gpu/cpu). See docs/gpu-runbook.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-/work/main/.venv/bin/python}
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m bench.gpu_prepare "$@"
du -sh .gpu/bundle
