#!/usr/bin/env bash
# On the GPU machine: stash the carried part(s) of onnxruntime-gpu in /tmp/ort-parts (which survives
# between calls while the machine stays warm); once all parts are there, join, verify and install them
# into /tmp/ortgpu. Prints what is still missing. Source-safe: `bash scripts/gpu_ort_install.sh`.
#   then: export PYTHONPATH=/tmp/ortgpu:$PYTHONPATH
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p /tmp/ort-parts
for d in .gpu/ort[0-9]*; do
  [ -d "$d" ] && cp -n "$d"/* /tmp/ort-parts/ 2>/dev/null
done
cd /tmp/ort-parts
if [ -d /tmp/ortgpu/onnxruntime ]; then echo "onnxruntime-gpu already installed in /tmp/ortgpu"; exit 0; fi
[ -f WHEEL ] && [ -f PARTS ] || { echo "part 1 (WHEEL, PARTS, SHA256) not carried yet: have $(ls | tr '\n' ' ')"; exit 3; }
wheel=$(cat WHEEL); n=$(cat PARTS)
have=$(ls "$wheel".* 2>/dev/null | wc -l)
if [ "$have" -lt "$n" ]; then echo "have $have of $n parts: $(ls "$wheel".* | xargs -n1 basename | tr '\n' ' ')"; exit 3; fi
cat $(ls "$wheel".* | sort) > "/tmp/$wheel"
echo "$(cat SHA256)  /tmp/$wheel" | sha256sum -c - || exit 4
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --target /tmp/ortgpu "/tmp/$wheel" || exit 5
rm -f "/tmp/$wheel"
echo "onnxruntime-gpu installed in /tmp/ortgpu"
