"""INT8 vs fp32 latency on ONNX Runtime CPU, and what ONNX Runtime really runs of each int8 graph.

nf_resnet50 (randomised, folded, 224²) in fp32, the TensorRT int8 form (S8S8), the ONNX Runtime int8 form
(U8S8, 7-bit weights) and the same form quantized from a graph passed through ONNX Runtime's
`quant_pre_process` first; bn_resnet50 (the BN twin) in fp32 and its int8-ort form. All are nfdeploy
ONNX Runtime backends (intra-op spinning off, as every nfdeploy session) timed side by side by
nfdeploy.perf.time_group: interleaved rounds with rotating start until stable or capped, each ratio
the median of per-round ratios with its 95% bootstrap interval, the machine's load before and after.

Calibration and accuracy use 224² tiles of scikit-learn's two sample photographs (calibrated on
alternate tiles, SQNR measured on the others against the fp32 graph): random weights give no labels,
so the accuracy figure is signal kept, not a dataset accuracy. For every int8 graph the report also
holds ONNX Runtime's optimized graph counts (nfdeploy.export.quantize.ort_fusion: Convs fused into
QLinearConv vs left in float, DequantizeLinear left) and a per-op-type profile (ORT's own profiler) of
where the time goes.

    python -m bench.int8_speed --out bench/results/int8-speed-cpu-2026-12-01 [--batches 1,32 --threads 2]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from nfdeploy.artifacts import atomic_write_json, atomic_write_text
from nfdeploy.export.onnx_graph import run_with_values
from nfdeploy.export.quantize import (
    CalibrationData,
    CalibrationOptions,
    describe_fusion,
    lint_int8,
    ort_fusion,
    quantize_graph,
)
from nfdeploy.export.study_inputs import export_randomised, photo_tiles
from nfdeploy.machine import describe_loads
from nfdeploy.metrics import sqnr_db
from nfdeploy.perf import RoundPlan, Stopwatch, machine_info, machine_load, parse_batches, time_group
from nfdeploy.perf.gemm_ceiling import int8_gemm_ceiling
from nfdeploy.perf.rounds import describe_ratio, ratio_table_rows
from nfdeploy.render import markdown_table
from nfdeploy.runtime.base import BackendSpec
from nfdeploy.runtime.ort import OrtBackend

INPUT = (3, 224, 224)
# (member, model, form, pre-processed): the graphs timed side by side
MEMBERS = (
    ("nf fp32", "nf_resnet50", "fp32", False),
    ("nf int8", "nf_resnet50", "int8", False),
    ("nf int8-ort", "nf_resnet50", "int8-ort", False),
    ("nf int8-ort pre", "nf_resnet50", "int8-ort", True),
    ("bn fp32", "bn_resnet50", "fp32", False),
    ("bn int8-ort", "bn_resnet50", "int8-ort", False),
)
# (A, B): A / B > 1 means B is faster
RATIOS = (
    ("nf fp32", "nf int8-ort"),
    ("nf fp32", "nf int8"),
    ("nf fp32", "nf int8-ort pre"),
    ("nf int8-ort", "nf int8-ort pre"),
    ("bn fp32", "bn int8-ort"),
    ("bn int8-ort", "nf int8-ort"),
)
GOALS = {1: 2.5, 32: 3.0}  # issue 17: int8-ort >= 2.5x fp32 at batch 1, >= 3x at batch 32


def make_graphs(work: Path, calib: CalibrationData, log) -> dict[str, dict]:
    """{member: {"path", "quantize": record | None, "fusion": ..., "lint_ok": ...}} for MEMBERS."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    graphs: dict[str, dict] = {}
    fp32 = {}
    for model in ("nf_resnet50", "bn_resnet50"):
        fp32[model] = export_randomised(model, work / f"{model}.onnx", INPUT[-1])
    pre = work / "nf_resnet50.pre.onnx"
    sw = Stopwatch()
    quant_pre_process(str(fp32["nf_resnet50"]), str(pre))
    pre_s = sw.seconds()
    for member, model, form, preprocessed in MEMBERS:
        if form == "fp32":
            graphs[member] = {"path": fp32[model], "quantize": None}
            continue
        src = pre if preprocessed else fp32[model]
        path = work / f"{member.replace(' ', '_')}.onnx"
        rec = quantize_graph(src, path, form, calib, CalibrationOptions(method="minmax", samples=len(calib.images)))
        import onnx

        lint = lint_int8(onnx.load(str(path)), form, allow_batchnorm=model.startswith("bn_"))
        fusion = ort_fusion(path) if form == "int8-ort" else None
        graphs[member] = {
            "path": path,
            "quantize": {k: rec[k] for k in ("form", "activations", "weights", "quantize_seconds")},
            "lint_ok": lint["ok"],
            "lint_errors": lint["errors"][:5],
            "written_ops": lint["ops"],
            "fusion": fusion,
            "pre_processed": preprocessed,
            **({"quant_pre_process_seconds": pre_s} if preprocessed else {}),
        }
        log(
            f"{member}: quantized in {rec['quantize_seconds']:.0f} s"
            + (f"; {describe_fusion(fusion)}" if fusion else "")
        )
    return graphs


def accuracy(graphs: dict[str, dict], x: np.ndarray) -> dict[str, dict]:
    """SQNR of each int8 graph's logits vs its model's fp32 graph, and top-1 agreement, on held-out tiles."""
    ref = {
        m: run_with_values(graphs[f"{m.split('_')[0]} fp32"]["path"], [], x)[1] for m in ("nf_resnet50", "bn_resnet50")
    }
    out = {}
    for member, model, form, _ in MEMBERS:
        if form == "fp32":
            continue
        y = run_with_values(graphs[member]["path"], [], x)[1]
        out[member] = {
            "logits_sqnr_db": float(sqnr_db(ref[model], y)),
            "top1_agreement": float(np.mean(y.argmax(1) == ref[model].argmax(1))),
            "tiles": int(len(x)),
        }
    return out


def op_profile(path: Path, precision: str, batch: int, threads: int, runs: int) -> dict[str, float]:
    """Share of node time per op type over `runs` runs of the graph at `path` (ONNX Runtime's profiler, spinning
    off)."""
    with tempfile.TemporaryDirectory() as td:
        spec = BackendSpec("onnxruntime", "cpu", precision)
        with OrtBackend(spec, INPUT, path, threads=threads, profile_prefix=Path(td) / "prof") as b:
            x = np.random.default_rng(0).standard_normal((batch, *INPUT)).astype(np.float32)
            b.run(x)  # warm-up run: in the profile too, but a small share of `runs`
            for _ in range(runs):
                b.run(x)
            events = json.loads(Path(b.session.end_profiling()).read_text())
    per_op: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]
    total = sum(per_op.values()) or 1.0
    return {op: us / total for op, us in sorted(per_op.items(), key=lambda kv: -kv[1])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-time", type=float, default=2.0, help="timed seconds per member and batch, at least")
    ap.add_argument("--max-time", type=float, default=240.0, help="cap per batch (all members) before 'noisy'")
    ap.add_argument("--profile-runs", type=int, default=5)
    args = ap.parse_args(argv)
    command = "python -m bench.int8_speed " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    import onnxruntime

    torch.set_num_threads(args.threads)
    lines: list[str] = []

    def log(msg: str) -> None:
        print(msg, flush=True)
        lines.append(msg)

    tiles = photo_tiles()
    calib = CalibrationData(tiles[0::2], "sklearn sample photos (alternate 224² tiles)", "photos")
    report = {
        "command": command,
        "onnxruntime": onnxruntime.__version__,
        "threads": args.threads,
        "machine": machine_info(),
        "spinning": "off (session.intra_op.allow_spinning 0, every nfdeploy ORT session)",
        "calibration": calib.describe(),
        "batches": [],
        "log": lines,
    }
    plan = RoundPlan(warmup_s=1.0, min_time_s=args.min_time, max_time_s=args.max_time)
    report["kernel_ceiling"] = c = int8_gemm_ceiling(args.threads, plan)
    log(
        f"GEMM {c['n']}³ on ONNX Runtime: fp32 {c['giga_ops_per_s']['fp32']:.0f} GFLOP/s, u8s8 int8 "
        f"{c['giga_ops_per_s']['int8']:.0f} giga-ops/s; fp32 / int8 time {describe_ratio(c['fp32 / int8'])}"
    )
    with tempfile.TemporaryDirectory(prefix="int8-speed-") as tmp:
        graphs = make_graphs(Path(tmp), calib, log)
        report["graphs"] = {m: {k: v for k, v in g.items() if k != "path"} for m, g in graphs.items()}
        report["accuracy"] = accuracy(graphs, tiles[1::2])
        for m, a in report["accuracy"].items():
            log(f"{m}: logits SQNR {a['logits_sqnr_db']:.1f} dB vs fp32, top-1 agreement {a['top1_agreement']:.0%}")
        backends = {}
        for member, _model, form, _ in MEMBERS:
            spec = BackendSpec("onnxruntime", "cpu", "fp32" if form == "fp32" else form)
            backends[member] = OrtBackend(spec, INPUT, graphs[member]["path"], threads=args.threads)
            backends[member].activate()
        ratios = {f"{a} / {b}": (a, b) for a, b in RATIOS}
        for batch in parse_batches(args.batches):
            load0 = machine_load()
            rows, rat, info = time_group(backends, batch, INPUT, plan, ratios=ratios)
            load1 = machine_load()
            profile = {
                m: op_profile(graphs[m]["path"], p, batch, args.threads, args.profile_runs)
                for m, p in (("nf fp32", "fp32"), ("nf int8-ort", "int8-ort"))
            }
            report["batches"].append(
                {
                    "batch": batch,
                    "rows": rows,
                    "ratios": rat,
                    "info": info,
                    "profile": profile,
                    "load_before": load0,
                    "load_after": load1,
                }
            )
            log(
                f"batch {batch}: "
                + ", ".join(f"{n} {r['median_ms']:.1f} ms" for n, r in rows.items())
                + f" ({info['rounds']} rounds, {info['stopped_by']})"
            )
            for k, v in rat.items():
                log(f"  {k}: {describe_ratio(v)}")
            write(args.out, report)  # after every batch: a run cut short keeps what it measured
        for b in backends.values():
            b.deactivate()
    print(f"wrote {args.out}/int8_speed.json and .md")
    return 0


def write(out: Path, report: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "int8_speed.json", report)
    md = [
        "# INT8 vs fp32 latency, ONNX Runtime CPU (nf_resnet50 / bn_resnet50, randomised, folded, 224²)",
        "",
        f"Command: `{report['command']}`. ONNX Runtime {report['onnxruntime']}, {report['threads']} threads, intra-op "
        f"spinning {report['spinning']}. "
        f"CPU: {report['machine'].get('cpu', {}).get('model') or report['machine'].get('cpu')}. "
        "Interleaved rounds (nfdeploy.perf.time_group, rotating start); latency = median of per-round medians; "
        "ratio = median of per-round ratios (A / B > 1: B faster) with its 95% bootstrap interval.",
        "",
        "## The ceiling: ONNX Runtime's integer GEMM vs its float GEMM on this CPU",
        "",
    ]
    c = report.get("kernel_ceiling")
    if c:
        r = c["fp32 / int8"]
        md += [
            f"MatMul fp32 vs MatMulInteger u8 x s8 -> int32, {c['n']}³, {c['threads']} threads, interleaved: "
            f"{c['giga_ops_per_s']['fp32']:.1f} GFLOP/s vs {c['giga_ops_per_s']['int8']:.1f} giga-ops/s; fp32 time / "
            f"int8 time {r['ratio']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] over {r['rounds']} rounds "
            f"(stopped by {c['stopped_by']}). A network that were all GEMM could gain no more than this from int8.",
            "",
        ]
    md += ["## What ONNX Runtime runs of each int8 graph (its optimized graph, extended level)", ""]
    grows = []
    for m, g in report["graphs"].items():
        if g["quantize"] is None:
            continue
        f = g["fusion"]
        grows.append(
            {
                "graph": m,
                "activations": g["quantize"]["activations"],
                "lint": "ok" if g["lint_ok"] else "errors",
                "ORT fusion": describe_fusion(f)
                if f
                else "n/a (the TensorRT form: ORT runs its Convs in float between DequantizeLinear nodes)",
                "logits SQNR dB": report["accuracy"][m]["logits_sqnr_db"],
                "top-1 agreement": report["accuracy"][m]["top1_agreement"],
            }
        )
    md += [
        markdown_table(grows, floatfmt="{:.3g}"),
        "",
        "Accuracy: logits vs the model's fp32 graph on "
        f"{next(iter(report['accuracy'].values()))['tiles']} held-out photo "
        f"tiles; calibration: {report['calibration']}.",
        "",
    ]
    for b in report["batches"]:
        md += [
            f"## batch {b['batch']}",
            "",
            f"{describe_loads(b['load_before'], b['load_after'])}. {b['info']['rounds']} rounds, "
            f"stopped by {b['info']['stopped_by']}.",
            "",
        ]
        md.append(
            markdown_table(
                [
                    {
                        "graph": n,
                        "median ms": r["median_ms"],
                        "95% interval": f"[{r['median_ci95_ms'][0]:.4g}, {r['median_ci95_ms'][1]:.4g}]",
                        "noisy": "NOISY" if r["noisy"] else "",
                    }
                    for n, r in b["rows"].items()
                ],
                floatfmt="{:.4g}",
            )
        )
        goal = GOALS.get(b["batch"])
        md += [
            "",
            markdown_table(
                [
                    {**row, "goal": f">= {goal}" if goal and row["ratio"] == "nf fp32 / nf int8-ort" else ""}
                    for row in ratio_table_rows(b["ratios"])
                ],
                floatfmt="{:.3f}",
            ),
            "",
            "Share of node time by op type (ONNX Runtime profiler): "
            + "; ".join(
                f"{m}: " + ", ".join(f"{op} {100 * s:.1f}%" for op, s in list(p.items())[:6])
                for m, p in b["profile"].items()
            ),
            "",
        ]
    md += ["## Log", "", "```", *report["log"], "```"]
    atomic_write_text(out / "int8_speed.md", "\n".join(md) + "\n")


if __name__ == "__main__":
    sys.exit(main())
