#!/usr/bin/env bash
# The whole test suite, from nothing: set up the environment, lint and format check, then pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
# The tree passes its formatter and linter (pyproject.toml [tool.ruff]) before any test runs.
.venv/bin/ruff check --quiet .
.venv/bin/ruff format --check --quiet .
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
