#!/usr/bin/env bash
# The main job on the bundled default data: set up, then the whole pipeline on scikit-learn's
# handwritten digits: train → export (ONNX; TensorRT-RTX engine when installed) → parity → bench.
# Prints where the run, the export and the reports are. Extra arguments go to `nfdeploy pipeline`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/nfdeploy pipeline nf_digits --out runs/pipeline "$@"
