#!/usr/bin/env bash
# Quiet-machine figures, run one after another (nothing else running).
set -x
cd /work/main
PY=.venv/bin/python
export PYTHONPATH=$PWD
date; uptime
# 1. forensics must-show on the fully trained digits model (30 epochs, 99.72%)
$PY bench/forensics.py digits --run RUN_DIR_OF_nf_digits_30_epochs > /tmp/q/forensics.log 2>&1; echo "forensics rc=$?"
date; uptime
# 2. nf_resnet50 224 export (randomised), then the against self-check and the nf_resnet50 bench
$PY - <<'PY' > /tmp/q/r50export.log 2>&1
from pathlib import Path
from bench.gpu.sources import write_random_run
from nfdeploy.export import export_options, export_run
run = write_random_run(Path("/tmp/q/r50run"), "nf_resnet50", input_size=224)
export_run(run, Path("/tmp/q/r50export"), export_options(precisions=["fp32"], check=False))
PY
echo "r50 export rc=$?"
date; uptime
$PY bench/against_selfcheck.py /tmp/q/r50export --batches 1,8 --min-time 1 --max-time 20 --out bench/results/against-cpu-2026-11-26 > /tmp/q/against.log 2>&1; echo "against rc=$?"
date; uptime
$PY bench/nf_resnet50_cpu.py --export /tmp/q/r50export --out bench/results/nf_resnet50-cpu-2026-11-26-rounds --batches 1,8 --min-time 2 --max-time 20 > /tmp/q/r50bench.log 2>&1; echo "r50 bench rc=$?"
date; uptime
# 3. digits pipeline bench with the new method (the 30-epoch digits run)
$PY -m nfdeploy export RUN_DIR_OF_nf_digits_30_epochs --out /tmp/q/digits-export > /tmp/q/dexport.log 2>&1; echo "digits export rc=$?"
$PY -m nfdeploy bench /tmp/q/digits-export --batch 1,8,32 --min-time 1 --warmup 0.5 -o bench/results/pipeline-digits-cpu-2026-11-26-rounds > /tmp/q/dbench.log 2>&1; echo "digits bench rc=$?"
date; uptime
# 4. int8 speed ratios, batch 1 and 32
$PY bench/int8_speed.py --out bench/results/int8-cpu-2026-11-26 --batches 1 --rounds 9 > /tmp/q/int8_b1.log 2>&1; echo "int8 b1 rc=$?"
$PY bench/int8_speed.py --out bench/results/int8-cpu-2026-11-26 --batches 32 --rounds 9 --iters-large 2 > /tmp/q/int8_b32.log 2>&1; echo "int8 b32 rc=$?"
date; uptime
echo QUIET-DONE
