"""INT8 vs fp32 latency on ONNX Runtime CPU: nf_resnet50 (randomised, folded, 224²) in fp32, the
TensorRT int8 form (S8S8) and the ONNX Runtime int8 form (U8S8), and the BN twin bn_resnet50's
int8-ort graph, interleaved in one run.

Each round runs every graph for a fixed number of iterations (after a warm-up), in the order A B C D;
a ratio is the median over rounds of the per-round ratio of mean latencies, with a bootstrap 95%
interval over rounds. The machine's load average is recorded with every figure (other jobs share
the cores). This is a small self-contained loop; nfdeploy.bench's interleaved engine will replace it.

    PYTHONPATH=$PWD python bench/int8_speed.py --out bench/results/int8-cpu-2026-11-26
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nfdeploy.artifacts import atomic_write_json, atomic_write_text
from nfdeploy.export.onnx_graph import export_module
from nfdeploy.export.quantize import CalibrationData, CalibrationOptions, lint_int8, quantize_graph
from nfdeploy.reports import markdown_table

RATIOS = (("nf fp32", "nf int8"), ("nf fp32", "nf int8-ort"), ("bn int8-ort", "nf int8-ort"), ("bn fp32", "bn int8-ort"))


def session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def bootstrap(ratios: np.ndarray, seed: int = 0, n: int = 2000) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    meds = np.median(rng.choice(ratios, size=(n, len(ratios)), replace=True), axis=1)
    return float(np.percentile(meds, 2.5)), float(np.percentile(meds, 97.5))


def interleaved(sessions: dict, x: np.ndarray, rounds: int, iters: int, warmup: int) -> dict[str, np.ndarray]:
    """{name: per-round mean latency in seconds}, the graphs run in turn within each round."""
    feeds = {k: {s.get_inputs()[0].name: x} for k, s in sessions.items()}
    for k, s in sessions.items():
        for _ in range(warmup):
            s.run(None, feeds[k])
    out = {k: [] for k in sessions}
    for _ in range(rounds):
        for k, s in sessions.items():
            t0 = time.perf_counter()
            for _ in range(iters):
                s.run(None, feeds[k])
            out[k].append((time.perf_counter() - t0) / iters)
    return {k: np.asarray(v) for k, v in out.items()}


def write(args, report) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / f"int8_speed_b{args.batches.replace(',', '-')}.json", report)
    md = ["# INT8 vs fp32 latency, ONNX Runtime CPU (nf_resnet50 / bn_resnet50, randomised, folded, 224²)\n",
          f"Command: `{report['command']}`. ONNX Runtime {report['onnxruntime']}, {args.threads} threads on "
          f"{report['cpu_count']} cores. Interleaved rounds; ratio = median of per-round ratios (a / b, >1: b faster), "
          "bootstrap 95% interval. Load average is the machine's (other jobs shared the cores).\n",
          markdown_table(report["figures"], floatfmt="{:.3g}")]
    atomic_write_text(args.out / f"int8_speed_b{args.batches.replace(',', '-')}.md", "\n".join(md) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("bench/results/int8-cpu-2026-11-26"))
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--iters-large", type=int, default=2, help="iterations per round at batch > 1 (batch 1: 20)")
    ap.add_argument("--calib", type=int, default=16, help="random N(0,1) calibration images (speed does not depend on them)")
    args = ap.parse_args()
    from nfdeploy.fold import fold_model, randomize_
    from nfdeploy.models import create_model

    report = {"command": "PYTHONPATH=$PWD python bench/int8_speed.py " + " ".join(os.sys.argv[1:]),
              "cpu_count": os.cpu_count(), "threads": args.threads, "figures": []}
    import onnxruntime

    report["onnxruntime"] = onnxruntime.__version__
    calib = CalibrationData(np.random.default_rng(0).standard_normal((args.calib, 3, 224, 224)).astype(np.float32),
                            "N(0,1) random images", "random")
    with tempfile.TemporaryDirectory(prefix="int8-speed-") as tmp:
        work = Path(tmp)
        paths = {}
        for net_name, key in (("nf_resnet50", "nf"), ("bn_resnet50", "bn")):
            torch.manual_seed(0)
            net, _ = fold_model(randomize_(create_model(net_name).eval(), seed=0).double(), dtype=torch.float32)
            fp32 = work / f"{key}.onnx"
            export_module(net, fp32, (3, 224, 224), opset=18)
            paths[f"{key} fp32"] = fp32
            for form in ("int8", "int8-ort") if key == "nf" else ("int8-ort",):
                q = work / f"{key}.{form}.onnx"
                quantize_graph(fp32, q, form, calib, CalibrationOptions(samples=args.calib))
                import onnx

                lint = lint_int8(onnx.load(str(q)), form, allow_batchnorm=key == "bn")
                report.setdefault("graphs", {})[f"{key} {form}"] = {"lint_ok": lint["ok"], "ops": lint["ops"],
                                                                     "dq_consumers": lint["dq_consumers"]}
                paths[f"{key} {form}"] = q
            print(f"{net_name}: graphs ready", flush=True)
        sessions = {k: session(p, args.threads) for k, p in paths.items()}
        for b in (int(v) for v in args.batches.split(",")):
            x = np.random.default_rng(1).standard_normal((b, 3, 224, 224)).astype(np.float32)
            iters = 20 if b == 1 else args.iters_large
            load0 = os.getloadavg()
            t = interleaved(sessions, x, args.rounds, iters, warmup=3 if b == 1 else 1)
            load1 = os.getloadavg()
            for a, c in RATIOS:
                r = t[a] / t[c]
                lo, hi = bootstrap(r)
                fig = {"batch": b, "ratio": f"{a} / {c}", "median": float(np.median(r)), "ci95_low": lo, "ci95_high": hi,
                       f"median_ms_a": float(np.median(t[a]) * 1e3), "median_ms_b": float(np.median(t[c]) * 1e3),
                       "rounds": args.rounds, "iters_per_round": iters, "load_avg_1m_start": load0[0],
                       "load_avg_1m_end": load1[0]}
                report["figures"].append(fig)
                print(f"batch {b}: {a} / {c} = {fig['median']:.2f}x [{lo:.2f}, {hi:.2f}] "
                      f"({fig['median_ms_a']:.1f} vs {fig['median_ms_b']:.1f} ms; load {load0[0]:.1f}→{load1[0]:.1f})", flush=True)
            write(args, report)  # after every batch: a run cut short keeps what it measured
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
