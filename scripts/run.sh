#!/usr/bin/env bash
# The main job on the bundled default data: set up, train the default recipe (NF-ResNet on
# scikit-learn's handwritten digits) and print where the run dir is.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/nfdeploy train nf_digits "$@"
