#!/usr/bin/env bash
# Bring onnxruntime-gpu to the GPU machine, which reaches no package registry: download its cp312 wheel
# here and split it into git-ignored folders .gpu/ort1 .. .gpu/ortN of < 60 MiB each. A device call
# carries at most 64 MiB (repo included), so each folder travels in its own call, back to back, while the
# machine stays warm; docs/gpu-runbook.md has the calls.
#
# Only onnxruntime-gpu is needed: the GPU image already has onnx, onnx-ir, onnxscript, ml-dtypes,
# safetensors, typer, rich, scikit-learn, numpy, protobuf, flatbuffers, packaging (its package list in the
# device docs). onnxruntime-gpu's CUDA/cuDNN libraries come from torch's nvidia-* wheels there, found by
# onnxruntime.preload_dlls().
#
#   scripts/gpu_wheels.sh            download + split (idempotent)
#   PART_MIB=50 scripts/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-/work/main/.venv/bin/python}
VERSION=${ORT_VERSION:-1.31.1}
PART_MIB=${PART_MIB:-55}
DL=.gpu/download
mkdir -p "$DL"
WHEEL=$(ls "$DL"/onnxruntime_gpu-"$VERSION"-cp312-*.whl 2>/dev/null | head -1 || true)
if [ -z "$WHEEL" ]; then
  "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$DL" "onnxruntime-gpu==$VERSION"
  WHEEL=$(ls "$DL"/onnxruntime_gpu-"$VERSION"-cp312-*.whl | head -1)
fi
rm -rf .gpu/ort[0-9]*
tmp=$(mktemp -d)
split -b "${PART_MIB}M" -d -a 1 "$WHEEL" "$tmp/part."
i=1
for part in "$tmp"/part.*; do
  mkdir -p ".gpu/ort$i"
  mv "$part" ".gpu/ort$i/$(basename "$WHEEL").$(printf %02d $i)"
  i=$((i + 1))
done
rmdir "$tmp"
n=$((i - 1))
sha256sum "$WHEEL" | awk '{print $1}' > .gpu/ort1/SHA256
echo "$(basename "$WHEEL")" > .gpu/ort1/WHEEL
echo "$n" > .gpu/ort1/PARTS
du -sh .gpu/ort[0-9]*
echo "onnxruntime-gpu $VERSION: $(stat -c %s "$WHEEL") bytes in $n parts (.gpu/ort1 .. .gpu/ort$n); sha256 $(cat .gpu/ort1/SHA256)"
