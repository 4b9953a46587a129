"""ONNX Runtime sessions in a mixed round: an ORT export against a copy of itself, with a torch backend in the
same interleaved round, once with ORT's intra-op spinning on (ORT's default) and once off (nfdeploy's setting).

    OMP_WAIT_POLICY=PASSIVE python -m bench.ort_spinning EXPORT_DIR --out bench/results/ort-spinning-...

The copy is the same bytes in another directory (a second session of the same graph): its ratio must be 1.00
with an interval containing 1 when neither session steals the other's cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from nfdeploy.artifacts import atomic_write_json, atomic_write_text
from nfdeploy.check.backends import load_export_source, torch_backend
from nfdeploy.machine import machine_load
from nfdeploy.perf.rounds import RoundPlan, describe_ratio
from nfdeploy.perf.timing import time_group
from nfdeploy.runtime.base import BackendSpec
from nfdeploy.runtime.ort import OrtBackend


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export_dir", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-time", type=float, default=3.0)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    source = load_export_source(args.export_dir)
    onnx = args.export_dir / source.manifest.onnx["fp32"].file
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(shutil.copy(onnx, Path(tmp) / "copy.onnx"))
        for batch in (int(b) for b in args.batches.split(",")):
            for spinning in (True, False):
                members = {
                    "A": OrtBackend(
                        BackendSpec("onnxruntime", "cpu", "fp32"), source.input_shape, onnx, threads=args.threads
                    ),
                    "B": OrtBackend(
                        BackendSpec("onnxruntime", "cpu", "fp32"), source.input_shape, copy, threads=args.threads
                    ),
                    "torch": torch_backend(source, BackendSpec("torch", "cpu", "fp32", "folded")),
                }
                members["A"].spinning = members["B"].spinning = spinning
                for b in members.values():
                    b.activate()
                try:
                    load = machine_load()
                    res, ratios, info = time_group(
                        members,
                        batch,
                        source.input_shape,
                        RoundPlan(warmup_s=1.0, min_time_s=args.min_time, min_iters=10, max_time_s=6 * args.min_time),
                        ratios={"A/B": ("A", "B"), "A/torch": ("A", "torch")},
                    )
                finally:
                    for b in members.values():
                        b.deactivate()
                r = {
                    "batch": batch,
                    "ort_spinning": spinning,
                    "A_ms": res["A"]["median_ms"],
                    "B_ms": res["B"]["median_ms"],
                    "torch_ms": res["torch"]["median_ms"],
                    "A/B": describe_ratio(ratios["A/B"]),
                    "A/B_ci95": ratios["A/B"]["ci95"],
                    "rounds": info["rounds"],
                    "settled": info["settled"],
                    "load_before": load["loadavg_1_5_15"],
                    "other_cores_before": load["other_processes_cores"],
                }
                rows.append(r)
                print(r, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        args.out / "ort_spinning.json",
        {
            "rows": rows,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "threads": args.threads,
            "export": str(args.export_dir),
        },
    )
    md = [
        f"# ORT export vs a copy of itself, torch folded in the same round ({source.manifest.model})",
        "",
        f"Command: `OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')} python -m bench.ort_spinning EXPORT --out OUT "
        f"--batches {args.batches} --threads {args.threads} --min-time {args.min_time}`",
        "",
        "| batch | ORT spinning | A ms | B (copy) ms | torch ms | A / B [95% interval] | settled | load before |",
        "|---|---|---|---|---|---|---|---|",
    ]
    md += [
        f"| {r['batch']} | {'on' if r['ort_spinning'] else 'off'} | {r['A_ms']:.3g} | {r['B_ms']:.3g} | "
        f"{r['torch_ms']:.3g} | {r['A/B']} | {r['settled']} | {r['load_before']} |"
        for r in rows
    ]
    atomic_write_text(args.out / "ort_spinning.md", "\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
