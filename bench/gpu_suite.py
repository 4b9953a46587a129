"""The GPU evidence suite (issue 12): parity, batch invariance and latency on a real GPU, in phases.

    python bench/gpu_suite.py --bundle .gpu/bundle --out OUT --work /tmp/gs-work --phase 1,2 [--deadline-s 540]

Phases, most valuable first; each writes OUT/phaseN.json and OUT/phaseN.tar.gz (its reports, saved outputs,
log) after every step, so a run cut short returns every step it finished (at most 8 files come back):

1. torch parity: every torch backend (CPU fp32; CUDA fp32 with TF32 off, TF32, fp16, bf16; eager and CUDA
   graph; torch.compile with --compile) against the float64 reference, on the carried digits export and on
   nf_resnet50 (seeded random weights, 224²); ONNX Runtime CPU on the same carried ONNX; outputs saved for
   the CPU-vs-GPU comparison; the batch-invariance matrix (NF folded beside the folded BN twin, per
   precision and mode); a few epochs of digits training on the GPU if time is left.
2. latency: unfolded NF, folded NF and folded BN twin on torch CUDA, fp32/TF32/fp16/bf16, eager and CUDA
   graph, batches 1..256, CUDA-event device time (nfdeploy.perf.bench_report); model TFLOP/s and its
   share of a matmul peak measured in the same run for the same precision.
3. ONNX Runtime CUDA EP (fp32, TF32, fp16 ONNX; IO binding): parity and latency. Needs onnxruntime-gpu on
   PYTHONPATH (docs/gpu-runbook.md); nf_resnet50's ONNX is exported here, from the same seeded weights.
4. TensorRT-RTX: what the builder said on the CPU machine (the bundle's trt_rtx.json) and what the runtime
   says on this GPU, when tensorrt_rtx is importable here.
5. serving: `nfdeploy serve` (the bundled tritonserver, a Python-backend model) on each GPU backend of the digits export
   in turn, load-tested at concurrency 1, 4, 16 with every response compared bitwise to the same sample alone
   (nfdeploy.serve.loadtest); on a machine without a GPU, onnxruntime-cpu-fp32. Needs nfdeploy[serve] and an
   interpreter with a shared libpython; a step that cannot start a server records why. Not in the default
   --phase list: ask for it (--phase 5).

Without a GPU every CUDA backend is reported as skipped with its reason, and the CPU backends run: the
same command rehearses the suite on a CPU machine. No number is written for anything that did not run.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.gpu.parity_outputs import run_parity  # noqa: E402
from bench.gpu.sources import (  # noqa: E402
    read_bundle_info,
    relocate_bundle,
    twin_backends,
    unfolded_backends,
    write_random_run,
    write_torch_only_export,
)
from bench.gpu.steps import Phase, write_json  # noqa: E402
from nfdeploy.errors import one_line  # noqa: E402
from nfdeploy.perf.flops import torch_macs  # noqa: E402
from nfdeploy.perf.peak import cpu_matmul_peak, cuda_matmul_peak  # noqa: E402

TITLES = {
    1: "torch parity and batch invariance",
    2: "latency (torch CUDA)",
    3: "ONNX Runtime CUDA EP",
    4: "TensorRT-RTX",
    5: "serving (Triton, concurrency sweep)",
}
DEFAULT_BUDGET = {1: 240.0, 2: 270.0, 3: 300.0, 4: 60.0, 5: 240.0}
TORCH_PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
INVARIANCE_MODES = ("eager", "cudagraph")


class Plan:
    """Sizes per device (GPU: the issue's settings; CPU: a rehearsal that exercises the same code)."""

    def __init__(self, cuda: bool, tiny: bool):
        self.cuda = cuda
        self.r50_size = 64 if tiny else 224
        self.r50_samples = 16 if tiny else (128 if cuda else 32)
        self.r50_invariance = 8 if tiny else (32 if cuda else 8)
        self.digits_samples = 64 if tiny else 512
        self.digits_invariance = 16 if tiny else 64
        self.batches = (1, 8, 32, 128, 256) if cuda else ((1, 4) if tiny else (1, 8))
        self.bench_budget = {"nf_digits": 0.3, "nf_resnet50": 0.65}  # shares of what is left in phase 2/3
        self.train_epochs = 5

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items()}


def capabilities() -> dict[str, Any]:
    """What this machine can run, with the reason for each thing it cannot (recorded, and shown)."""
    import importlib

    caps: dict[str, Any] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
    }
    for mod in ("onnx", "onnxscript", "onnx_ir", "onnxruntime", "tensorrt_rtx", "tensorrt"):
        try:
            m = importlib.import_module(mod)
            caps[mod] = {"ok": True, "version": getattr(m, "__version__", "?"), "file": getattr(m, "__file__", None)}
        except Exception as e:  # noqa: BLE001 - a missing or broken install is "not available", with its reason
            caps[mod] = {"ok": False, "reason": one_line(e, 200)}
    if caps["onnxruntime"]["ok"]:
        import onnxruntime as ort

        if hasattr(ort, "preload_dlls"):
            try:
                ort.preload_dlls()
            except Exception as e:  # noqa: BLE001
                caps["onnxruntime"]["preload_dlls"] = one_line(e, 200)
        caps["onnxruntime"]["providers"] = ort.get_available_providers()
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        caps["gpu"] = {
            "name": p.name,
            "compute_capability": f"{p.major}.{p.minor}",
            "sms": p.multi_processor_count,
            "memory_gib": round(p.total_memory / 2**30, 1),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
        }
    return caps


class Suite:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.out: Path = args.out.resolve()
        self.work: Path = args.work.resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("MPLCONFIGDIR", str(self.work / ".cache" / "matplotlib"))
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(self.work / ".cache" / "inductor"))
        self.t0 = time.perf_counter()
        self.deadline = self.t0 + args.deadline_s
        self.logfile = open(self.out / "suite.log", "a", encoding="utf-8")
        self.cuda = torch.cuda.is_available()
        self.plan = Plan(self.cuda, args.tiny)
        self.dev = "cuda" if self.cuda else "cpu"
        self.exports = self.work / "exports"
        self.runs = self.work / "runs"

    def log(self, msg: str) -> None:
        line = f"[{datetime.now():%H:%M:%S} +{time.perf_counter() - self.t0:6.1f}s] {msg}"
        print(line, flush=True)
        self.logfile.write(line + "\n")
        self.logfile.flush()

    def phase(self, n: int) -> Phase:
        budget = self.args.budget.get(n, DEFAULT_BUDGET[n])
        ph = Phase(n, TITLES[n], self.out, self.work, budget, self.deadline, self.log)
        ph.summary["plan"] = self.plan.describe()
        ph.summary["device"] = self.dev
        return ph

    # ------------------------------------------------------------------------------- sources
    def digits_export(self) -> Path:
        """The carried digits export, relocated under the work dir (once per work dir)."""
        export = self.exports / "nf_digits"
        if not (export / "manifest.json").is_file():
            relocate_bundle(self.args.bundle, self.work)
        return export

    def r50_run(self) -> Path:
        run = self.runs / "nf_resnet50"
        if not (run / "weights.safetensors").is_file():
            write_random_run(run, "nf_resnet50", self.plan.r50_size)
        return run

    def r50_torch_export(self) -> Path:
        """nf_resnet50 for the torch backends: a manifest without ONNX (export costs time phase 1 lacks)."""
        export = self.exports / "nf_resnet50-torch"
        if not (export / "manifest.json").is_file():
            write_torch_only_export(self.r50_run(), export, "phase 1/2 run torch backends only; phase 3 exports ONNX")
        return export

    def r50_onnx_export(self, precisions: tuple[str, ...] = ("fp32", "fp16")) -> Path:
        from nfdeploy.export import export_options, export_run

        export = self.exports / "nf_resnet50"
        if not (export / "manifest.json").is_file():
            export_run(
                self.r50_run(),
                export,
                export_options("default", precisions=precisions, check=False),
                log=lambda m: self.log("   " + str(m)),
            )
        return export

    def torch_only(self) -> list[str]:
        """Backend-name substrings for the torch parity of phase 1."""
        modes = ["eager", "cudagraph"] + (["compile"] if self.args.compile else [])
        return ["torch-cpu-fp32"] + [
            f"torch-cuda-{t}-folded-{m}" for t in ("fp32", "fp32-tf32", "fp16", "bf16") for m in modes
        ]

    # -------------------------------------------------------------------------------- phases
    def phase1(self) -> None:
        ph = self.phase(1)
        caps = ph.step("environment", lambda: capabilities(), limit=60)
        if caps:
            write_json(ph.dir / "environment.json", {"capabilities": caps, "machine": _machine()})
        if not self.cuda:
            ph.skip("torch CUDA backends (all precisions and modes)", "no CUDA device visible to torch")
        if not self.args.compile:
            ph.skip("torch.compile backends", "left out (--compile): each precision x batch recompiles, tens of s each")
        ph.summary["bundle"] = read_bundle_info(self.args.bundle)

        def parity(name: str, export: Path, only: list[str], samples: int, inv: int, **kw: Any) -> dict[str, Any]:
            from nfdeploy.check.backends import export_backends, load_export_source

            backends = export_backends(load_export_source(export), compile=self.args.compile, tensorrt=False)
            rep = run_parity(
                export,
                ph.dir / f"parity-{name}",
                only=only,
                backends=backends,
                max_samples=samples,
                invariance_samples=inv,
                log=lambda m: self.log("   " + str(m)),
                **kw,
            )
            ph.summary["results"][f"parity {name}"] = _parity_digest(rep)
            return {"ok": rep["ok"], "failed": rep["failed"], "inputs_sha256": rep["inputs_sha256"]}

        p = self.plan
        ph.step(
            "parity nf_digits (carried export)",
            lambda: parity(
                "nf_digits",
                self.digits_export(),
                self.torch_only() + ["onnxruntime-cpu"],
                p.digits_samples,
                p.digits_invariance,
                batch_matrix=True,
            ),
            limit=0.35 * ph.summary["budget_s"],
        )
        ph.step(
            "batch invariance nf_digits (NF folded vs BN twin)",
            lambda: self.invariance(ph, "nf_digits", self.digits_export(), p.digits_invariance),
            limit=40,
        )
        ph.step(
            f"parity nf_resnet50 (random weights, {p.r50_size}²)",
            lambda: parity("nf_resnet50", self.r50_torch_export(), self.torch_only(), p.r50_samples, p.r50_invariance),
            limit=0.35 * ph.summary["budget_s"],
        )
        ph.step(
            "batch invariance nf_resnet50 (NF folded vs BN twin)",
            lambda: self.invariance(ph, "nf_resnet50", self.r50_torch_export(), p.r50_invariance),
            limit=60,
        )
        if self.cuda:
            ph.step(f"train nf_digits on the GPU ({p.train_epochs} epochs)", self.train_digits, limit=60)
        else:
            ph.skip("train nf_digits on the GPU", "no CUDA device visible to torch")
        ph.save()

    def invariance(self, ph: Phase, name: str, export: Path, samples: int) -> dict[str, Any]:
        """The batch-invariance matrix (nfdeploy.check.batch_matrix, parity's protocol) of the folded BN twin (eval
        mode) per precision and mode, beside the NF rows of the parity report."""
        from nfdeploy.check.backends import load_export_source
        from nfdeploy.check.batch_matrix import DEFAULT_BATCHES, batch_invariance_matrix, matrix_rows
        from nfdeploy.check.parity import load_parity_data
        from nfdeploy.precision import get_precision
        from nfdeploy.render import markdown_table

        source = load_export_source(export)
        x = load_parity_data(source, None, None, samples)[0][:samples]
        precs = TORCH_PRECISIONS if self.cuda else ("fp32",)
        matrix = dict(ph.summary["results"].get(f"parity {name}", {}).get("batch_invariance", {}))
        for b in twin_backends(source, precs, INVARIANCE_MODES if self.cuda else ("",), self.dev):
            if b.unavailable_reason():
                continue
            try:
                with b:
                    matrix[f"BN twin folded (eval) {b.name}"] = batch_invariance_matrix(
                        b.run, x, get_precision(b.precision).torch_dtype, DEFAULT_BATCHES
                    )
            except Exception as e:  # noqa: BLE001 - e.g. bf16 on a GPU without it: a finding
                matrix[f"BN twin folded (eval) {b.name}"] = {"error": {"skipped": one_line(e, 200)}}
        write_json(ph.dir / f"invariance-{name}.json", matrix)
        ph.summary["results"][f"batch invariance {name}"] = {
            "matrix": matrix,
            "markdown": markdown_table(matrix_rows(matrix)),
        }
        return {"rows": len(matrix)}

    def train_digits(self) -> dict[str, Any]:
        from nfdeploy.config import load_recipe
        from nfdeploy.train import train

        t = time.perf_counter()
        res = train(
            load_recipe("nf_digits", {"train.epochs": self.plan.train_epochs}),
            self.runs / "nf_digits-gpu",
            progress=False,
            log=lambda m: self.log("   " + str(m)),
        )
        return {
            "epochs": self.plan.train_epochs,
            "seconds": time.perf_counter() - t,
            **{k: res.summary.get(k) for k in ("test_accuracy", "device", "best_test_accuracy") if k in res.summary},
        }

    def phase2(self) -> None:
        ph = self.phase(2)
        precs = TORCH_PRECISIONS if self.cuda else ("fp32",)
        peaks: dict[str, list[dict[str, Any]]] = {}

        def measure_peaks(when: str) -> dict[str, Any]:
            for prec in precs:
                try:
                    pk = cuda_matmul_peak(prec) if self.dev == "cuda" else cpu_matmul_peak()
                    peaks.setdefault(prec, []).append({**pk, "tflops": pk["gflops"] / 1e3, "when": when})
                except Exception as e:  # noqa: BLE001
                    ph.skip(f"matmul peak {prec} ({when})", one_line(e, 200))
            ph.summary["results"]["matmul peak"] = peaks
            return {p: round(v[-1]["tflops"], 2) for p, v in peaks.items()}

        ph.step("matmul peak (before)", lambda: measure_peaks("before the model timings"), limit=40)
        if not self.cuda:
            ph.skip("torch CUDA latency", "no CUDA device visible to torch: the CPU fp32 backends stand in")
        for name, export_fn in (("nf_digits", self.digits_export), ("nf_resnet50", self.r50_torch_export)):
            share = self.plan.bench_budget[name]
            ph.step(
                f"latency {name}",
                lambda name=name, export_fn=export_fn, share=share: self.bench_torch(
                    ph, name, export_fn(), max(ph.left() - 40, 10) * share
                ),
                limit=None,
                reserve=35,
            )
            gc.collect()
            if self.cuda:
                torch.cuda.empty_cache()
        ph.step("matmul peak (after)", lambda: measure_peaks("after the model timings"), limit=40, reserve=2)
        ph.step("TFLOP/s and share of peak", lambda: self.flops_table(ph), limit=60, reserve=1)
        ph.save()

    def bench_torch(self, ph: Phase, name: str, export: Path, budget: float) -> dict[str, Any]:
        from nfdeploy.check.backends import export_backends, load_export_source
        from nfdeploy.perf import bench_report

        source = load_export_source(export)
        if self.cuda:
            modes = INVARIANCE_MODES + (("compile",) if self.args.compile else ())
            own = [
                b
                for b in export_backends(source, compile=self.args.compile, tensorrt=False)
                if b.name.startswith("torch-cuda")
            ]
            backends = (
                unfolded_backends(source, TORCH_PRECISIONS, modes)
                + own
                + twin_backends(source, TORCH_PRECISIONS, modes, "cuda")
            )
        else:
            own = [
                b for b in export_backends(source, compile=False, tensorrt=False) if b.name.startswith("torch-cpu-fp32")
            ]
            backends = own + twin_backends(source, ("fp32",), ("",), "cpu")
        # Call as it is now; the parallel bench branch adds interleaved rounds (switch them on here after merging).
        rep = bench_report(
            source,
            ph.dir / f"bench-{name}",
            batches=self.plan.batches,
            min_time=1.0,
            warmup=0.5,
            compare=False,
            budget_s=budget,
            backends=backends,
            log=lambda m: self.log("   " + str(m)),
        )
        ph.summary["results"][f"latency {name}"] = _bench_digest(rep)
        return {"cells": len(rep["results"]), "failed": len(rep["failed"]), "over_budget": len(rep["over_budget"])}

    def flops_table(self, ph: Phase) -> dict[str, Any]:
        from nfdeploy.check.backends import load_export_source
        from nfdeploy.render import markdown_table

        peaks = ph.summary["results"].get("matmul peak", {})
        rows = []
        for name, export_fn in (("nf_digits", self.digits_export), ("nf_resnet50", self.r50_torch_export)):
            lat = ph.summary["results"].get(f"latency {name}")
            if not lat:
                continue
            source = load_export_source(export_fn())
            # The unfolded model has the same convolutions and matmuls as the folded one (WS convs are convs).
            gflop = 2 * torch_macs(source.model, source.input_shape) / 1e9
            for r in lat["results"]:
                prec = r["precision"]
                peak = [p["tflops"] for p in peaks.get(prec, [])]
                tflops = gflop * r["batch"] / (r["median_ms"] * 1e-3) / 1e3
                rows.append(
                    {
                        "model": name,
                        "backend": r["backend"],
                        "batch": r["batch"],
                        "GFLOP/img": round(gflop, 4),
                        "median ms": r["median_ms"],
                        "metric": r["metric"],
                        "TFLOP/s": tflops,
                        "matmul peak TFLOP/s": max(peak) if peak else None,
                        "share of peak": tflops / max(peak) if peak else None,
                    }
                )
        write_json(
            ph.dir / "flops.json",
            {
                "method": "FLOPs = 2 x MACs of convolutions and matmuls (torch.utils.flop_counter) of the NF model per "
                "image (the twin has the same convs); peak = best of the matmul "
                "peaks measured before/after in this run, same precision",
                "rows": rows,
            },
        )
        ph.summary["results"]["TFLOP/s"] = {"rows": len(rows), "markdown": markdown_table(rows, floatfmt="{:.4g}")}
        return {"rows": len(rows)}

    def phase3(self) -> None:
        ph = self.phase(3)
        caps = ph.step("onnxruntime", lambda: capabilities()["onnxruntime"], limit=60)
        cuda_ep = bool(caps and "CUDAExecutionProvider" in caps.get("providers", []))
        if not cuda_ep:
            ph.skip(
                "ONNX Runtime CUDA EP",
                "CUDAExecutionProvider not available: "
                + json.dumps(caps)[:300]
                + " (install onnxruntime-gpu first: docs/gpu-runbook.md)",
            )
        only = ["onnxruntime-cuda"] if cuda_ep else ["onnxruntime-cpu"]

        def parity(name: str, export: Path, samples: int, inv: int) -> dict[str, Any]:
            rep = run_parity(
                export,
                ph.dir / f"parity-{name}",
                only=only + ["onnxruntime-cpu-fp32"],
                max_samples=samples,
                invariance_samples=inv,
                log=lambda m: self.log("   " + str(m)),
            )
            ph.summary["results"][f"parity {name}"] = _parity_digest(rep)
            return {"ok": rep["ok"], "failed": rep["failed"], "inputs_sha256": rep["inputs_sha256"]}

        p = self.plan
        ph.step(
            "parity nf_digits (carried ONNX)",
            lambda: parity("nf_digits", self.digits_export(), p.digits_samples, p.digits_invariance),
            limit=60,
        )
        ph.step("export nf_resnet50 (fp32, fp16 ONNX)", lambda: {"dir": str(self.r50_onnx_export())}, limit=150)
        if (self.exports / "nf_resnet50" / "manifest.json").is_file():
            ph.step(
                "parity nf_resnet50",
                lambda: parity("nf_resnet50", self.exports / "nf_resnet50", p.r50_samples, p.r50_invariance),
                limit=60,
            )
        for name, export_fn in (
            ("nf_digits", self.digits_export),
            ("nf_resnet50", lambda: self.exports / "nf_resnet50"),
        ):
            if not (export_fn() / "manifest.json").is_file():
                ph.skip(f"ONNX Runtime latency {name}", "no ONNX export")
                continue
            ph.step(
                f"latency {name}",
                lambda name=name, export_fn=export_fn: self.bench_ort(
                    ph, name, export_fn(), only, max(ph.left() - 10, 5) * (0.4 if name == "nf_digits" else 1.0)
                ),
                reserve=5,
            )
        ph.save()

    def bench_ort(self, ph: Phase, name: str, export: Path, only: list[str], budget: float) -> dict[str, Any]:
        from nfdeploy.perf import bench_report

        rep = bench_report(
            export,
            ph.dir / f"bench-{name}",
            batches=self.plan.batches,
            only=only,
            min_time=1.0,
            warmup=0.5,
            compare=False,
            budget_s=budget,
            log=lambda m: self.log("   " + str(m)),
        )
        ph.summary["results"][f"latency {name}"] = _bench_digest(rep)
        return {"cells": len(rep["results"]), "failed": len(rep["failed"]), "over_budget": len(rep["over_budget"])}

    def phase4(self) -> None:
        ph = self.phase(4)
        built = self.args.bundle / "trt_rtx.json"
        if built.is_file():
            ph.summary["results"]["TensorRT-RTX build (CPU machine)"] = json.loads(built.read_text())
        else:
            ph.skip("TensorRT-RTX build record", f"{built} not in the bundle")
        ph.step("TensorRT-RTX runtime on this GPU", lambda: self.trt_rtx_runtime(ph), limit=60)
        ph.save()

    def phase5(self) -> None:
        ph = self.phase(5)
        backends = (
            ["onnxruntime-cuda-fp32", "torch-cuda-fp32-folded-eager", "torch-cuda-fp16-folded-eager"]
            if self.cuda
            else ["onnxruntime-cpu-fp32"]
        )
        for backend in backends:
            ph.step(
                f"serve + loadtest nf_digits {backend}",
                lambda backend=backend: self.serve_sweep(ph, self.digits_export(), backend),
                limit=max(30.0, ph.left() / 2),
                reserve=10,
            )
        ph.save()

    def serve_sweep(self, ph: Phase, export: Path, backend: str) -> dict[str, Any]:
        from nfdeploy.serve.loadtest import LoadOptions, loadtest

        opts = LoadOptions(
            concurrency=(1, 4, 16),
            window_s=0.5 if self.args.tiny else 1.0,
            max_windows=3 if self.args.tiny else 6,
            samples=16,
            overload=0,
            faults=False,
            speed=False,
        )
        rep = loadtest(
            export,
            ph.dir / f"loadtest-{backend}",
            opts,
            serve_args=["--backend", backend, "--max-batch", "32"],
            log=lambda m: self.log("   " + str(m)),
        )
        rows = [
            {
                "concurrency": r["concurrency"],
                "throughput_ips": r["throughput_ips"],
                "p50_ms": r["p50_ms"],
                "p99_ms": r["p99_ms"],
                "batches": r["batch_stats"],
                "bitwise_share": r["correctness"].get("bitwise_share"),
                "max_ulp": r["correctness"].get("max_ulp"),
                "errors": sum(r["errors"].values()),
            }
            for r in rep["levels"]
        ]
        ph.summary["results"][f"serving {backend}"] = {
            "levels": rows,
            "parity": rep["served"]["parameters"].get("nfdeploy.check.parity"),
        }
        return {"levels": len(rows), "min_bitwise_share": min(r["bitwise_share"] or 0 for r in rows)}

    def trt_rtx_runtime(self, ph: Phase) -> dict[str, Any]:
        """Deserialize the carried engine with tensorrt_rtx's own runtime and record every message it logs."""
        try:
            import tensorrt_rtx as trt
        except Exception as e:  # noqa: BLE001
            ph.skip(
                "TensorRT-RTX runtime",
                f"tensorrt_rtx is not importable here ({one_line(e, 200)}); its wheels "
                "were not carried (over 100 MB: see docs/gpu-runbook.md)",
            )
            return {"importable": False}
        if not self.cuda:
            ph.skip("TensorRT-RTX runtime", "no CUDA device visible to torch: an engine cannot be deserialized here")
            return {"importable": True, "cuda": False}
        messages: list[str] = []

        class Logger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)

            def log(self, severity, msg):
                messages.append(f"{severity}: {msg}")

        engines = sorted((self.args.bundle / "rtx").glob("*.engine"))
        out: dict[str, Any] = {"version": trt.__version__, "engines": {}}
        for path in engines:
            runtime = trt.Runtime(Logger())
            engine = runtime.deserialize_cuda_engine(path.read_bytes())
            out["engines"][path.name] = {"deserialized": engine is not None, "messages": messages[:]}
            messages.clear()
        ph.summary["results"]["TensorRT-RTX runtime"] = out
        return {"engines": len(engines)}


def _machine() -> dict[str, Any]:
    from nfdeploy.perf import machine_info

    return machine_info()


def _parity_digest(rep: dict[str, Any]) -> dict[str, Any]:
    from nfdeploy.render import markdown_table

    rows = [
        {
            k: r.get(k)
            for k in ("name", "status", "rel_l2", "max_abs", "top1_agreement", "accuracy", "reason")
            if r.get(k) is not None
        }
        for r in rep.get("backends", [])
    ]
    inv = rep.get("batch_matrix", {}).get("backends", {})
    return {
        "ok": rep.get("ok"),
        "failed": rep.get("failed"),
        "data": rep.get("data"),
        "inputs_sha256": rep.get("inputs_sha256"),
        "inputs_shape": rep.get("inputs_shape"),
        "backends": rows,
        "batch_invariance": inv,
        "markdown": markdown_table(rows, ["name", "status", "rel_l2", "top1_agreement", "reason"], floatfmt="{:.3g}"),
    }


def _bench_digest(rep: dict[str, Any]) -> dict[str, Any]:
    from nfdeploy.render import markdown_table

    rows = [
        {
            "backend": r["name"],
            "precision": r["precision"],
            "batch": r["batch"],
            "metric": r["primary"],
            "scope": r["scope"],
            "median_ms": r["median_ms"],
            "p90_ms": r[r["primary"]]["p90"],
            "throughput_ips": r["throughput_ips"],
            "iterations": r["iterations"],
            "truncated": r["truncated"],
        }
        for r in rep["results"]
    ]
    # unfolded / NF folded / BN folded side by side, per precision, mode and batch (same run, one backend at a time)
    by: dict[tuple[str, str, int], dict[str, float]] = {}
    for r in rep["results"]:
        b = r["backend"]
        variant = b.get("variant") or ""
        key = (r["precision"], b.get("mode") or "", r["batch"])
        by.setdefault(key, {})[variant] = r["median_ms"]
    ratios = []
    for (prec, mode, batch), m in sorted(by.items()):
        unf, nf, bn = m.get("unfolded"), m.get("folded"), m.get("bn-folded")
        if nf and (unf or bn):
            ratios.append(
                {
                    "precision": prec,
                    "mode": mode,
                    "batch": batch,
                    "unfolded_ms": unf,
                    "nf_folded_ms": nf,
                    "bn_folded_ms": bn,
                    "folded_speedup": unf / nf if unf else None,
                    "nf_over_bn": nf / bn if bn else None,
                }
            )
    return {
        "results": rows,
        "ratios": ratios,
        "skipped": rep["skipped"],
        "failed": rep["failed"],
        "over_budget": rep["over_budget"],
        "settings": rep["settings"],
        "wall_seconds": rep["wall_seconds"],
        "markdown": markdown_table(rows, floatfmt="{:.4g}") + "\n\nUnfolded vs folded vs BN twin (medians from one "
        "bench run, backends timed one after another, not interleaved):\n\n"
        + markdown_table(ratios, floatfmt="{:.4g}"),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=REPO / ".gpu" / "bundle", help="carried digits run + export")
    ap.add_argument("--out", type=Path, required=True, help="where phaseN.json / phaseN.tar.gz / suite.log go")
    ap.add_argument(
        "--work",
        type=Path,
        default=Path("/tmp/gs-work"),
        help="exports, runs, reports (kept while the machine stays warm)",
    )
    ap.add_argument("--phase", default="1,2,3,4", help="comma list of phases to run, in the order given")
    ap.add_argument("--deadline-s", type=float, default=540.0, help="wall-time limit of this invocation")
    ap.add_argument("--budget", action="append", default=[], metavar="N=S", help="phase N's budget in s (repeatable)")
    ap.add_argument("--compile", action="store_true", help="also torch.compile backends")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (tests)")
    args = ap.parse_args(argv)
    try:
        args.phases = [int(p) for p in args.phase.split(",") if p.strip()]
        args.budget = {int(k): float(v) for k, v in (b.split("=") for b in args.budget)}
    except ValueError:
        ap.error("--phase takes e.g. 1,2 and --budget N=SECONDS")
    bad = [p for p in args.phases if p not in TITLES]
    if bad:
        ap.error(f"unknown phase(s) {bad}; phases: {sorted(TITLES)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    suite = Suite(args)
    suite.log(
        f"gpu suite: phases {args.phases}, device {suite.dev}, torch {torch.__version__}, bundle {args.bundle}, "
        f"work {suite.work}, deadline {args.deadline_s:.0f} s"
    )
    for n in args.phases:
        try:
            getattr(suite, f"phase{n}")()
        except Exception as e:  # noqa: BLE001 - a phase that breaks outside its steps must not sink the next
            suite.log(f"phase {n} broke: {one_line(e)}")
    suite.log(
        f"done in {time.perf_counter() - suite.t0:.0f} s; files in {suite.out}: "
        + ", ".join(sorted(p.name for p in suite.out.iterdir()))
    )
    suite.logfile.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
