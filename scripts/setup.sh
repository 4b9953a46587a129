#!/usr/bin/env bash
# Create .venv and install nfdeploy with its dev extra (idempotent: reinstalls only when
# pyproject.toml changed). torch is pinned to 2.13.0 in pyproject.toml: the CPU build lies on this
# machine's disk; an open range would pull a multi-GB CUDA build.
#
# The venv is made from an interpreter whose libpython is a shared library when one exists:
# the bundled tritonserver's Python backend embeds libpython, and a venv from a static build (pyenv's
# default) fails when a served model loads. PYTHON=... overrides the choice.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
shared() { "$1" -c 'import sys, sysconfig; sys.exit(not (sys.version_info >= (3, 11) and sysconfig.get_config_var("Py_ENABLE_SHARED")))' 2>/dev/null; }
if [ -z "${PYTHON:-}" ]; then
    PY=python3
    for cand in python3 python3.13 python3.12 python3.11 /usr/bin/python3 /usr/bin/python3.13 /usr/bin/python3.12 /usr/bin/python3.11; do
        if command -v "$cand" >/dev/null && shared "$cand"; then PY=$cand; break; fi
    done
else
    PY=$PYTHON
fi
if [ ! -x .venv/bin/python ]; then
    # pyproject.toml: requires-python >= 3.11 (tomllib); say so before pip does, less cryptically.
    "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || { echo "setup.sh: nfdeploy needs Python >= 3.11; $PY is $("$PY" -V 2>&1) (set PYTHON=...)" >&2; exit 1; }
    shared "$PY" || echo "setup.sh: $PY has no shared libpython: nfdeploy serve will not run from this venv (set PYTHON= to one that has, e.g. Debian's /usr/bin/python3)" >&2
    "$PY" -m venv .venv
fi
stamp=.venv/.nfdeploy-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    # setuptools' editable build warns, as a Python warning, about same-named folders in the working directory (a
    # block of asterisks on every fresh set-up that asks nothing of the reader); errors still print.
    PYTHONWARNINGS=ignore .venv/bin/python -m pip install -q -e '.[dev]'
    echo "$want" > "$stamp"
fi
