"""Every timm NormFreeNet architecture: fold, export (fp32 ONNX), parity by the framework-relative rule.

Per model (randomised with seeded gains, nfdeploy.interop.timm.randomize_timm_(seed=0); 128x128 input;
SAMPLES N(0,1) inputs, seed 0): the float64 unfolded timm model is the reference; the unfolded timm model
in float32 (torch CPU) gives the framework's own float32 error; nfdeploy's folded ONNX on ONNX Runtime CPU
is judged by nfdeploy.precision.judged_tolerance("fp32", that error) = max(1e-5, 2 x framework error).
Also: ONNX nodes, fold + export seconds. Each model runs in its own subprocess under a time budget, and a
model whose parameters (x MEMORY_FACTOR, float64 copies during fold/export) do not fit in the memory
available is skipped with that reason. Models run smallest family first; results are written after each.

    PYTHONPATH=$PWD/tests/torchvision_shim python -m bench.timm_sweep [--budget 900] [--models a,b]

Each model's child process is `python -m bench.timm_sweep --one NAME` in the repository root.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

from nfdeploy.perf import Stopwatch
from nfdeploy.status import Status

REPO = Path(__file__).resolve().parent.parent  # the children run `python -m bench.timm_sweep` from here
SIZE = 128
SAMPLES = 4
MEMORY_FACTOR = 8 * 8  # bytes per float64 parameter x copies alive at once (unfolded, folded, export buffers)
ORDER = (
    "test_nfnet nf_regnet_b0 nf_regnet_b1 nf_regnet_b2 nf_regnet_b3 nf_resnet26 nf_seresnet26 nf_ecaresnet26 "
    "nf_regnet_b4 nf_regnet_b5 nf_resnet50 nf_seresnet50 nf_ecaresnet50 nfnet_l0 eca_nfnet_l0 dm_nfnet_f0 nfnet_f0 "
    "nf_resnet101 nf_seresnet101 nf_ecaresnet101 eca_nfnet_l1 dm_nfnet_f1 nfnet_f1 eca_nfnet_l2 dm_nfnet_f2 nfnet_f2 "
    "eca_nfnet_l3 dm_nfnet_f3 nfnet_f3 dm_nfnet_f4 nfnet_f4 dm_nfnet_f5 nfnet_f5 dm_nfnet_f6 nfnet_f6 nfnet_f7"
).split()


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable"):
            return int(line.split()[1]) * 1024
    return 0


def one(name: str) -> dict:
    """Runs in the child process."""
    import numpy as np
    import torch

    from nfdeploy.artifacts import ModelSource
    from nfdeploy.export import ExportOptions, ModelToExport, export_model
    from nfdeploy.interop.timm import create_timm_model, fold_timm_model, randomize_timm_
    from nfdeploy.metrics import compare_outputs, top1_agreement
    from nfdeploy.precision import judged_tolerance
    from nfdeploy.runtime.base import BackendSpec, run_batched
    from nfdeploy.runtime.ort import OrtBackend

    try:
        model = create_timm_model(name)
    except ValueError as e:
        return {"model": name, "status": Status.SKIPPED, "reason": f"not a NormFreeNet: {str(e)[:120]}"}
    params = sum(p.numel() for p in model.parameters())
    need, avail = params * MEMORY_FACTOR, mem_available()
    if need > avail:
        return {
            "model": name,
            "params_M": params / 1e6,
            "status": Status.SKIPPED,
            "reason": f"needs ~{need / 2**30:.1f} GiB, {avail / 2**30:.1f} GiB available",
        }
    randomize_timm_(model, seed=0)
    model = model.double().eval()
    x = np.random.default_rng(0).standard_normal((SAMPLES, 3, SIZE, SIZE)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x).double())
        fw32 = torch.cat([model.float()(torch.from_numpy(x[i : i + 1])) for i in range(SAMPLES)]).double()
        model.double()
    framework = compare_outputs(ref, fw32)["rel_l2"]
    with tempfile.TemporaryDirectory() as td:
        subject = ModelToExport(
            model,
            fold=lambda dt: fold_timm_model(model, input_size=(SIZE, SIZE), dtype=dt),
            name=name,
            input_shape=(3, SIZE, SIZE),
            norm="nf",
            source=ModelSource(kind="bench"),
        )
        sw = Stopwatch()
        res = export_model(
            subject, Path(td) / "e", ExportOptions(precisions=("fp32",), check=False), log=lambda *a: None
        )
        export_s = sw.seconds()
        e = res.manifest.onnx["fp32"]
        b = OrtBackend(BackendSpec("onnxruntime", "cpu", "fp32"), (3, SIZE, SIZE), Path(td) / "e" / "model.onnx")
        with b:
            out = run_batched(b, x, 1)
    r = compare_outputs(ref, out)
    tol = judged_tolerance("fp32", framework)
    ok = r["rel_l2"] <= tol["rel_l2"] and top1_agreement(out, ref) >= tol["top1_agreement"]
    return {
        "model": name,
        "params_M": params / 1e6,
        "nodes": e.nodes,
        "export_s": export_s,
        "ort_fp32_rel_l2": r["rel_l2"],
        "torch_fp32_unfolded_rel_l2": framework,
        "tolerance_rel_l2": tol["rel_l2"],
        "passes_fixed_1e-5": r["rel_l2"] <= tol["floor_rel_l2"],
        "top1_agreement": top1_agreement(out, ref),
        "status": Status.PASS if ok else Status.FAIL,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=900, help="seconds per model")
    ap.add_argument("--models", default=None)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)
    if args.one:
        import torch

        torch.set_num_threads(1)
        print("RESULT " + json.dumps(one(args.one)), flush=True)
        return 0
    import timm

    from nfdeploy.render import markdown_table, write_bench_result

    known = set(timm.list_models("*nf*"))
    names = args.models.split(",") if args.models else [n for n in ORDER if n in known] + sorted(known - set(ORDER))
    stem = f"timm_sweep-cpu-{date.today().isoformat()}"
    # A sweep run in parts (--models) adds to the day's table: rows of models not rerun are kept.
    previous = args.out / f"{stem}.json"
    rows = (
        [r for r in json.loads(previous.read_text())["rows"] if r["model"] not in names] if previous.is_file() else []
    )
    for name in names:
        sw = Stopwatch()
        try:
            p = subprocess.run(
                [sys.executable, "-m", "bench.timm_sweep", "--one", name],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=args.budget,
                env=os.environ,
            )
            line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
            row = (
                json.loads(line[-1][7:])
                if line
                else {
                    "model": name,
                    "status": Status.CRASHED,
                    "reason": (p.stderr.strip().splitlines() or ["?"])[-1][:160],
                }
            )
        except subprocess.TimeoutExpired:
            row = {
                "model": name,
                "status": Status.SKIPPED,
                "reason": f"over the {args.budget:g} s budget on this machine",
            }
        row["wall_s"] = sw.seconds()
        rows.append(row)
        print(json.dumps(row), flush=True)
        meta = {
            "date": date.today().isoformat(),
            "size": SIZE,
            "samples": SAMPLES,
            "threads": 1,
            "seed": 0,
            "rule": "ORT CPU fp32 rel L2 <= max(1e-5, 2 x torch unfolded fp32 rel L2), both vs float64 unfolded timm",
            "command": "PYTHONPATH=$PWD/tests/torchvision_shim python -m bench.timm_sweep",
        }
        cols = [
            "model",
            "params_M",
            "nodes",
            "export_s",
            "ort_fp32_rel_l2",
            "torch_fp32_unfolded_rel_l2",
            "tolerance_rel_l2",
            "passes_fixed_1e-5",
            "top1_agreement",
            "status",
            "reason",
            "wall_s",
        ]
        md = (
            f"# timm NormFreeNet sweep ({meta['date']}, CPU, 1 thread, {SIZE}x{SIZE}, {SAMPLES} N(0,1) inputs, "
            f"randomised gains seed 0)\n\nRule: {meta['rule']}.\n\n"
            + markdown_table(rows, cols, floatfmt="{:.3g}")
            + f"\n`{meta['command']}`\n"
        )
        write_bench_result(args.out, stem, meta, rows, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
