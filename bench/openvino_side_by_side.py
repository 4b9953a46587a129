"""ONNX Runtime vs OpenVINO on the CPU, side by side: the same ONNX files (fp32, the int8 S8S8 form
model.int8.onnx, the int8 U8S8 form model.int8.ort.onnx) in interleaved rounds (nfdeploy.perf.time_group:
every member in turn each round, rotating start; ratios are medians of per-round ratios with 95% bootstrap
intervals), batch by batch, with achieved GFLOP/s (the fp32 graph's multiply-accumulates) against a matmul
peak of the row's kind (nfdeploy.perf.peak: float32; bf16 where the CPU has native bf16; int8 forms: ONNX
Runtime's u8 x s8 MatMulInteger) measured in the same run before the timing and again after every batch, the
best kept (a share above 1 is named in a warning), the OpenVINO kernels chosen on this CPU, and the machine's
load before and after every batch (the machine is shared).

ONNX Runtime's sessions run with intra-op spinning off (session.intra_op.allow_spinning 0, every nfdeploy
ORT session): spinning threads take the cores from the next member of a round (issue 17 §1).

    python -m bench.openvino_side_by_side --export EXPORT_DIR --out bench/results/openvino-digits-DATE
    python -m bench.openvino_side_by_side --model nf_resnet50 --out bench/results/openvino-nf_resnet50-DATE

With --parity, nfdeploy parity runs first on the same backends (report in OUT/parity) and the report names, per
precision and batch, the fastest backend that passed it.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

from nfdeploy.artifacts import atomic_write_json, atomic_write_text
from nfdeploy.check.backends import export_backends, load_export_source
from nfdeploy.check.parity import PARITY_JSON, parity_report
from nfdeploy.check.parity_options import ParityOptions
from nfdeploy.export import Int8Overrides, OnnxOverrides, export_options, export_run
from nfdeploy.machine import describe_loads
from nfdeploy.perf import RoundPlan, fastest_passing, machine_info, machine_load, onnx_macs, parse_batches, time_group
from nfdeploy.perf.peak import above_peak_warning, annotate_work, measure_again, peak_for
from nfdeploy.perf.rounds import describe_ratio, ratio_table_rows
from nfdeploy.render import markdown_table
from nfdeploy.runtime.base import BackendUnavailable
from nfdeploy.train.random_run import write_random_run

PRECISIONS = ("fp32", "bf16", "int8", "int8-ort")
RUNTIMES = ("onnxruntime", "openvino")


def make_export(model: str, work: Path, size: int, calib: int) -> Path:
    run = write_random_run(work / "run", model, input_size=size)
    out = work / "export"
    # check off: the export is not judged here (--parity judges it); calibration on the run's synthetic split
    opts = export_options(
        onnx=OnnxOverrides(precisions=["fp32", *PRECISIONS[1:]], check=False), int8=Int8Overrides(calib_samples=calib)
    )
    export_run(run, out, opts)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--export", type=Path, help="an export dir with fp32 and int8 ONNX files")
    ap.add_argument("--model", help="else: make a randomised export of this model (e.g. nf_resnet50)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--calib", type=int, default=32, help="calibration samples for a made export")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-time", type=float, default=2.0, help="timed seconds per member and batch, at least")
    ap.add_argument("--max-time", type=float, default=60.0, help="cap per batch (all members) before 'noisy'")
    ap.add_argument(
        "--parity",
        action="store_true",
        help="run nfdeploy parity on these backends first (report in OUT/parity) and name the fastest that passed",
    )
    ap.add_argument("--parity-samples", type=int, default=512)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if (args.export is None) == (args.model is None):
        ap.error("give --export or --model")
    command = "python -m bench.openvino_side_by_side " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    import torch

    torch.set_num_threads(args.threads)  # the peaks on the same number of threads
    with tempfile.TemporaryDirectory() as td:
        export = args.export or make_export(args.model, Path(td), args.size, args.calib)
        source = load_export_source(export)
        names = [f"{rt}-cpu-{p}" for p in PRECISIONS for rt in RUNTIMES]
        statuses, parity_where = None, "no parity run (--parity not given)"
        if args.parity:  # before any session of the timed group exists: parity holds one backend at a time
            parity = parity_report(
                export,
                args.out / "parity",
                ParityOptions(only=names, max_samples=args.parity_samples, threads=args.threads),
                log=lambda m: print(m, flush=True),
            )
            statuses = {r.name: r.status for r in parity.backends}
            parity_where = str(args.out / "parity" / PARITY_JSON)
        pool = {b.name: b for b in export_backends(source, tensorrt=False, threads=args.threads)}
        backends, skipped = {}, {}
        for n in names:
            b = pool.get(n)
            if b is None:
                skipped[n] = "not in this export"
                continue
            try:
                b.activate()
            except BackendUnavailable as e:
                skipped[n] = str(e)
                continue
            backends[n] = b
        macs = onnx_macs(export / source.manifest.onnx["fp32"].file)
        peaks: dict[tuple[str, str], dict] = {}  # (device, kind) -> the best measurement so far
        for precision in ("fp32", "int8", *(b.precision for b in backends.values())):
            peak_for("cpu", precision, peaks)
        report = {
            "command": command,
            "export": str(export),
            "model": args.model or source.manifest.model,
            "input_shape": list(source.input_shape),
            "threads": args.threads,
            "macs_per_sample": macs,
            "peaks": {kind: p for (_, kind), p in peaks.items()},
            "machine": machine_info(),
            "onnxruntime_spinning": "on"
            if any(getattr(b, "spinning", False) for b in backends.values())
            else "off (session.intra_op.allow_spinning 0)",
            "openvino": {
                n: {k: b.describe().get(k) for k in ("config", "mac_precisions", "mac_kernels", "inference_precision")}
                for n, b in backends.items()
                if n.startswith("openvino")
            },
            "skipped": skipped,
            "parity": statuses,
            "parity_report": parity_where,
            "batches": [],
        }
        ratios = {
            f"{p}: onnxruntime / openvino": (f"onnxruntime-cpu-{p}", f"openvino-cpu-{p}")
            for p in PRECISIONS
            if f"onnxruntime-cpu-{p}" in backends and f"openvino-cpu-{p}" in backends
        }
        ratios |= {
            f"{rt}: fp32 / {p}": (f"{rt}-cpu-fp32", f"{rt}-cpu-{p}")
            for rt in RUNTIMES
            for p in PRECISIONS[1:]
            if f"{rt}-cpu-fp32" in backends and f"{rt}-cpu-{p}" in backends
        }
        plan = RoundPlan(warmup_s=1.0, min_time_s=args.min_time, max_time_s=args.max_time)
        for batch in parse_batches(args.batches):
            load0 = machine_load()
            rows, rat, info = time_group(backends, batch, source.input_shape, plan, ratios=ratios)
            load1 = machine_load()
            for n, r in rows.items():
                r.update(name=n, batch=batch)
            report["batches"].append(
                {
                    "batch": batch,
                    "rows": rows,
                    "ratios": rat,
                    "info": info,
                    "load_before": load0,
                    "load_after": load1,
                    "fastest_passing": fastest_passing(list(rows.values()), statuses),
                }
            )
            print(f"batch {batch}: " + ", ".join(f"{n} {r['median_ms']:.2f} ms" for n, r in rows.items()), flush=True)
            for k, v in rat.items():
                print(f"  {k}: {describe_ratio(v)}", flush=True)
            measure_again(peaks)  # each peak the best of its measurements: every row's share against it
            report["peaks"] = {kind: p for (_, kind), p in peaks.items()}
            all_rows = [r for b in report["batches"] for r in b["rows"].values()]
            for r in all_rows:
                annotate_work(r, {"macs_per_sample": macs}, peaks)
            report["above_peak_warning"] = above_peak_warning(all_rows)
            write(args.out, report)  # after every batch: a run cut short keeps what it measured
        for b in backends.values():
            b.deactivate()
    print(f"wrote {args.out}/side_by_side.json and .md")
    return 0


def write(out: Path, report: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "side_by_side.json", report)
    fp, i8, bf = report["peaks"]["fp32"], report["peaks"]["int8"], report["peaks"].get("bf16")
    md = [
        f"# ONNX Runtime vs OpenVINO, CPU, side by side ({report['model']}, input {report['input_shape']})",
        "",
        f"Command: `{report['command']}`.",
        "",
        f"{report['threads']} threads; ONNX Runtime intra-op spinning {report['onnxruntime_spinning']}. "
        f"Interleaved rounds (rotating start); latency = median of per-round medians with its 95% bootstrap "
        f"interval; ratio = median of per-round ratios (>1: the second is faster). GFLOP/s = 2 x "
        f"{report['macs_per_sample'] / 1e6:.1f} M MACs/sample x batch / latency, "
        "against peaks measured in the same run: "
        f"float32 {fp['gflops']:.1f} GFLOP/s ({fp['what']}); "
        f"int8 forms {i8['gflops'] or 0:.1f} giga-ops/s ({i8['what']})"
        + (f"; bf16 {bf['gflops'] or 0:.1f} GFLOP/s ({bf['what']})" if bf else "")
        + f". CPU: {report['machine'].get('cpu', {}).get('model') or report['machine'].get('cpu')}.",
        "",
    ]
    if report.get("above_peak_warning"):
        md += [f"Warning: {report['above_peak_warning']}.", ""]
    for b in report["batches"]:
        md += [
            f"## batch {b['batch']}",
            "",
            f"{describe_loads(b['load_before'], b['load_after'])}. "
            f"{b['info']['rounds']} rounds, stopped by {b['info']['stopped_by']}.",
            "",
        ]
        md.append(
            markdown_table(
                [
                    {
                        "backend": n,
                        "precision": r["precision"],
                        "median ms": r["median_ms"],
                        "95% interval": f"[{r['median_ci95_ms'][0]:.3g}, {r['median_ci95_ms'][1]:.3g}]",
                        "GFLOP/s": r["gflops"],
                        "share of peak": r["peak_share"],
                        "noisy": "NOISY" if r["noisy"] else "",
                    }
                    for n, r in b["rows"].items()
                ],
                floatfmt="{:.3g}",
            )
        )
        md += ["", markdown_table(ratio_table_rows(b["ratios"]), floatfmt="{:.3f}"), ""]
    verdicts = [
        {**v, "ort_ov": b["ratios"].get(f"{v['precision']}: onnxruntime / openvino")}
        for b in report["batches"]
        for v in b["fastest_passing"]
    ]
    md += [
        "## Fastest backend that passed parity (per precision and batch, from the interleaved rows above)",
        "",
        f"Parity: {report['parity_report']}"
        + (" — statuses: " + ", ".join(f"{n} {s}" for n, s in report["parity"].items()) if report["parity"] else "")
        + ".",
        "",
    ]
    if verdicts:
        md += [
            markdown_table(
                [
                    {
                        "precision": v["precision"],
                        "batch": v["batch"],
                        "fastest that passed": v["fastest_passing"] or "none passed",
                        "its ms": v["fastest_passing_ms"],
                        "fastest of all": v["fastest"],
                        "its ms ": v["fastest_ms"],
                        "its parity": v["fastest_parity"],
                        "ONNX Runtime / OpenVINO": f"{v['ort_ov']['ratio']:.3f} [{v['ort_ov']['ci95'][0]:.3f}, "
                        f"{v['ort_ov']['ci95'][1]:.3f}]"
                        if v["ort_ov"]
                        else "-",
                    }
                    for v in verdicts
                ],
                floatfmt="{:.4g}",
            ),
            "",
            "An ONNX Runtime / OpenVINO interval that contains 1 is a tie: the faster median then names no winner.",
            "",
        ]
    md += ["## OpenVINO's runtime model on this CPU", ""]
    md += [
        f"- {n}: {v['inference_precision']}, MAC layers by precision {v['mac_precisions']}, kernels {v['mac_kernels']}"
        for n, v in report["openvino"].items()
    ]
    if report["skipped"]:
        md += ["", "Skipped: " + "; ".join(f"{n}: {why}" for n, why in report["skipped"].items())]
    atomic_write_text(out / "side_by_side.md", "\n".join(md) + "\n")


if __name__ == "__main__":
    sys.exit(main())
