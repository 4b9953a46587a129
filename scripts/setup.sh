#!/usr/bin/env bash
# Create .venv and install nfdeploy with its dev extra (idempotent: reinstalls only when
# pyproject.toml changed). torch is pinned to 2.13.0 in pyproject.toml: the CPU build lies on this
# machine's disk; an open range would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    # pyproject.toml: requires-python >= 3.11 (tomllib); say so before pip does, less cryptically.
    "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || { echo "setup.sh: nfdeploy needs Python >= 3.11; $PY is $("$PY" -V 2>&1) (set PYTHON=...)" >&2; exit 1; }
    "$PY" -m venv .venv
fi
stamp=.venv/.nfdeploy-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[dev]'
    echo "$want" > "$stamp"
fi
