"""One command for a GPU machine: train, export, parity and latency for two models, in a time budget.

    python bench/gpu_suite.py --out OUT [--budget-s 420] [--work DIR] [--pack] [--trt auto|off] [--compile]

Steps (each timed, each allowed to fail or be skipped with its reason, none taking the others down):

1. environment: device, GPU, versions, what the export needs (onnx, onnxscript for torch.onnx's dynamo
   exporter, onnxruntime for the export check and the ORT backends, ONNX Runtime's CUDA EP, TensorRT);
2. train the digits model (recipe nf_digits, a few epochs, on whatever device there is);
3. export it (fp32, fp16; TensorRT engines too with --trt auto when a usable TensorRT is importable);
4. nf_resnet50 with random (randomize_) weights: a minimal run dir (config.json with model_config and
   recipe, weights.safetensors: what load_run_model reads), exported with export_model, so parity and
   bench can rebuild the unfolded reference from it. On a GPU: 224x224 input, batches 1, 8, 32, 128
   (CPU backends: 1, 8). Without one: 64x64, batches 1, 8;
5. parity (nfdeploy.parity.parity_report) of both exports, when that module is importable;
6. latency (nfdeploy.bench.bench_report) of both exports.

Without onnxscript (or onnx) there is no export: the suite says so, builds the digits and nf_resnet50
sources in memory and benchmarks the torch backends only. torch.compile backends are left out unless
--compile (each precision x batch size recompiles: tens of seconds each).

Everything is written under --out (heavy artifacts under --work, default OUT/work): suite.json (summary:
device, GPU, versions, wall time per step, what ran, what was skipped and why), suite.md, suite.log, the
run dirs, export dirs, parity and bench reports. --pack also writes OUT/reports.tar.gz holding every
JSON/Markdown/PNG/log file of the work dir (no weights, ONNX or engines): on the device machine, where
only a few files come back, run

    PYTHONUNBUFFERED=1 python bench/gpu_suite.py --out $OUT --work /tmp/gs-work --pack
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import signal
import sys
import tarfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

GPU_R50 = {"input_size": 224, "batches": (1, 8, 32, 128), "cpu_batches": (1, 8)}
CPU_R50 = {"input_size": 64, "batches": (1, 8), "cpu_batches": (1, 8)}
GPU_DIGITS = {"epochs": 8, "batches": (1, 8, 32, 128), "cpu_batches": (1, 8, 32, 128)}
CPU_DIGITS = {"epochs": 4, "batches": (1, 8, 32), "cpu_batches": (1, 8, 32)}
SMALL_SUFFIXES = (".json", ".md", ".png", ".log", ".jsonl")


class StepTimeout(Exception):
    pass


@contextmanager
def time_limit(seconds: float | None):
    """Raise StepTimeout in the main thread after `seconds` (SIGALRM; between Python bytecodes)."""
    if seconds is None or not hasattr(signal, "setitimer"):
        yield
        return

    def handler(signum, frame):
        raise StepTimeout(f"exceeded its time share of {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, max(float(seconds), 1.0))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _one_line(e: BaseException, limit: int = 400) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:limit]}"


# ------------------------------------------------------------------------------------- helpers

def write_random_run(run_dir: Path, model: str = "nf_resnet50", input_size: int = 224, seed: int = 0,
                     num_classes: int = 1000) -> Path:
    """A minimal run dir for a model with random (randomize_) weights: config.json (model_config,
    recipe, dataset) and weights.safetensors, exactly what nfdeploy.train.load_run_model reads. The
    recipe's data section names a synthetic dataset of the model's shape, so parity has labelled data."""
    from nfdeploy.artifacts import atomic_write_json, save_tensors
    from nfdeploy.config import load_recipe
    from nfdeploy.fold import randomize_
    from nfdeploy.models import create_model
    from nfdeploy.runs import CONFIG, WEIGHTS

    recipe = load_recipe("nf_resnet50_imagefolder", {
        "model.name": model, "model.drop_rate": 0.0, "model.drop_path_rate": 0.0,
        "data.dataset": "synthetic", "data.path": "", "data.input_size": input_size, "data.num_classes": num_classes,
        "data.synthetic_size": 160, "data.in_chans": 3, "data.augment": False, "train.epochs": 1})
    net = randomize_(create_model(model, num_classes=num_classes, in_chans=3, input_size=input_size,
                                  **recipe.model.options), seed=seed).eval()
    run_dir.mkdir(parents=True, exist_ok=True)
    save_tensors(run_dir / WEIGHTS, net.state_dict(), metadata={"note": f"random weights (randomize_, seed {seed})"})
    atomic_write_json(run_dir / CONFIG, {
        "recipe": recipe.to_dict(),
        "model_config": asdict(net.cfg),
        "dataset": {"name": "synthetic", "mean": None, "std": None, "class_names": None},
        "environment": {"torch": torch.__version__, "note": "not trained: written by bench/gpu_suite.py"},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
    return run_dir


def export_random_run(run_dir: Path, out_dir: Path, precisions: tuple[str, ...], trt: Any, check: bool,
                      log: Callable[[str], None]):
    """export_model on fold_model(the run's randomised model), with a run source (load_export_source works)."""
    from nfdeploy.artifacts import sha256_file
    from nfdeploy.export import ExportOptions, export_model
    from nfdeploy.fold import fold_model
    from nfdeploy.runs import load_run_model
    from nfdeploy.runs import WEIGHTS

    model, resolved = load_run_model(run_dir)
    model = model.double().eval()
    cfg = model.cfg
    return export_model(
        model, out_dir, fold=lambda dtype: fold_model(model, dtype=dtype), name=resolved["recipe"]["model"]["name"],
        input_shape=(cfg.in_chans, cfg.input_size, cfg.input_size), norm=cfg.norm,
        source={"kind": "run", "run_dir": str(run_dir.resolve()), "weights": WEIGHTS,
                "weights_sha256": sha256_file(run_dir / WEIGHTS), "model_config": asdict(cfg), "twin": None},
        preprocessing={"mean": None, "std": None, "class_names": None, "dataset": "synthetic"},
        check_data=None, opts=ExportOptions(precisions=precisions, check=check, check_samples=16, trt=trt), log=log)


def torch_only_source(run_dir: Path, export_dir: Path, reason: str):
    """An in-memory ExportSource for a run without an export (no ONNX, no engines): torch backends only."""
    from nfdeploy.backends import ExportSource
    from nfdeploy.runs import load_run_model

    model, resolved = load_run_model(run_dir)
    cfg = model.cfg
    manifest = {"format": "nfdeploy-export-v1", "model": resolved["recipe"]["model"]["name"], "norm": cfg.norm,
                "input": {"name": "input", "shape": ["batch", cfg.in_chans, cfg.input_size, cfg.input_size]},
                "source": {"kind": "run", "run_dir": str(run_dir.resolve()), "model_config": asdict(cfg)},
                "onnx": {}, "engines": {}, "note": f"not exported: {reason}"}
    return ExportSource(manifest, model.float().eval(), export_dir, resolved)


def _capabilities(cuda: bool) -> dict[str, Any]:
    caps: dict[str, Any] = {}
    for mod in ("onnx", "onnxscript", "onnxruntime"):
        try:
            m = __import__(mod)
            caps[mod] = {"ok": True, "version": getattr(m, "__version__", "?")}
        except Exception as e:  # noqa: BLE001 - a broken install is "not available"
            caps[mod] = {"ok": False, "reason": _one_line(e, 200)}
    if caps["onnx"]["ok"] and caps["onnxscript"]["ok"]:
        caps["export"] = {"ok": True}
    else:
        missing = [m for m in ("onnx", "onnxscript") if not caps[m]["ok"]]
        caps["export"] = {"ok": False, "reason": f"{' and '.join(missing)} not importable: torch.onnx.export(dynamo=True) "
                                                 "needs onnx and onnxscript; no ONNX export, torch backends only"}
    if caps["onnxruntime"]["ok"]:
        import onnxruntime as ort

        if hasattr(ort, "preload_dlls"):
            try:
                ort.preload_dlls()
            except Exception:  # noqa: BLE001
                pass
        provs = ort.get_available_providers()
        caps["onnxruntime"]["providers"] = provs
        caps["ort_cuda"] = {"ok": "CUDAExecutionProvider" in provs} | (
            {} if "CUDAExecutionProvider" in provs else {"reason": "CUDAExecutionProvider not in " + ", ".join(provs)})
    else:
        caps["ort_cuda"] = {"ok": False, "reason": "onnxruntime not importable"}
    if not cuda:
        caps["tensorrt"] = {"ok": False, "reason": "no CUDA GPU: engines could be built (TensorRT-RTX) but not run"}
    else:
        try:
            from nfdeploy.export.tensorrt import import_tensorrt

            trt, flavour = import_tensorrt("auto")
            cc = torch.cuda.get_device_capability(0)
            if flavour == "tensorrt_rtx" and cc[0] == 9:
                caps["tensorrt"] = {"ok": False, "reason": f"only TensorRT-RTX {trt.__version__} is importable and its "
                                                           "engines do not run on Hopper GPUs"}
            else:
                caps["tensorrt"] = {"ok": True, "flavour": flavour, "version": str(trt.__version__)}
        except Exception as e:  # noqa: BLE001
            caps["tensorrt"] = {"ok": False, "reason": _one_line(e, 300)}
    return caps


PARITY_CHILD = """
import json, sys
sys.path.insert(0, sys.argv[1])
from nfdeploy.parity import parity_report
parity_report(sys.argv[2], sys.argv[3], only=json.loads(sys.argv[4]), log=lambda m: print(m, flush=True))
"""


def run_child(code: str, argv: list[str], timeout: float, log: Callable[[str], None]) -> None:
    """python -c CODE ARGV with a hard timeout; its output goes to `log` line by line."""
    import subprocess
    import threading

    proc = subprocess.Popen([sys.executable, "-c", code, *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    tail: list[str] = []

    def pump():
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            del tail[:-20]
            log(line)

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        t.join(5)
        raise StepTimeout(f"exceeded its time share of {timeout:.0f} s (child process killed)") from None
    finally:
        t.join(5)
    if rc != 0:
        last = next((x for x in reversed(tail) if x.strip()), "")
        raise RuntimeError(f"child process exited with {rc}: {last[:300]}")


# ---------------------------------------------------------------------------------------- suite

class Suite:
    def __init__(self, out: Path, work: Path, budget_s: float):
        self.out, self.work, self.budget_s = out, work, budget_s
        self.t0 = time.perf_counter()
        self.logfile = open(out / "suite.log", "w", encoding="utf-8")
        self.summary: dict[str, Any] = {
            "format": "nfdeploy-gpu-suite-v1", "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "argv": sys.argv[1:], "budget_s": budget_s, "out": str(out), "work": str(work),
            "steps": [], "skipped": [], "benches": {}, "parity": {}}

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def log(self, msg: str) -> None:
        line = f"[{datetime.now():%H:%M:%S} +{self.elapsed():6.1f}s] {msg}"
        print(line, flush=True)
        self.logfile.write(line + "\n")
        self.logfile.flush()

    def skip(self, what: str, reason: str) -> None:
        self.summary["skipped"].append({"what": what, "reason": reason})
        self.log(f"SKIP {what}: {reason}")

    def save(self) -> None:
        from nfdeploy.artifacts import atomic_write_json

        self.summary["wall_seconds"] = self.elapsed()
        atomic_write_json(self.out / "suite.json", self.summary)

    def step(self, name: str, fn: Callable[[], Any], limit: float | None = None) -> Any:
        """Run one step under a time limit; record status, wall time and the reason of a failure."""
        rec: dict[str, Any] = {"name": name, "limit_s": limit}
        if limit is not None and limit < 2:
            rec.update(status="skipped", seconds=0.0, reason="no time left in the budget")
            self.summary["steps"].append(rec)
            self.skip(name, rec["reason"])
            self.save()
            return None
        self.log(f"== {name}" + (f" (time share {limit:.0f} s)" if limit else ""))
        t = time.perf_counter()
        value = None
        try:
            with time_limit(limit):
                value = fn()
            rec["status"] = "ok"
        except StepTimeout as e:
            rec.update(status="timeout", reason=str(e))
        except Exception as e:  # noqa: BLE001 - a failed step is a finding; the suite goes on
            rec.update(status="failed", reason=_one_line(e))
            self.logfile.write(traceback.format_exc())
        rec["seconds"] = time.perf_counter() - t
        if isinstance(value, dict) and "detail" in value:
            rec["detail"] = value["detail"]
        self.summary["steps"].append(rec)
        self.log(f"   {name}: {rec['status']} in {rec['seconds']:.1f} s" + (f" ({rec['reason']})" if "reason" in rec else ""))
        self.save()
        return value


def _bench_digest(rep: dict[str, Any]) -> dict[str, Any]:
    rows = [{"backend": r["name"], "batch": r["batch"], "metric": r["primary"], "scope": r["scope"],
             "median_ms": r["median_ms"], "p90_ms": r[r["primary"]]["p90"], "throughput_ips": r["throughput_ips"],
             "truncated": r["truncated"]} for r in rep["results"]]
    return {"results": rows, "comparison": rep["comparison"]["rows"],
            "skipped": rep["skipped"] + rep["comparison"]["skipped"], "failed": rep["failed"],
            "over_budget": rep["over_budget"], "settings": rep["settings"], "wall_seconds": rep["wall_seconds"]}


def _parity_digest(rep: dict[str, Any]) -> dict[str, Any]:
    rows = []
    for r in rep.get("backends", []):
        rows.append({k: r.get(k) for k in ("name", "status", "rel_l2", "max_abs", "top1_agreement", "reason")
                     if r.get(k) is not None})
    return {"ok": rep.get("ok"), "failed": rep.get("failed"), "data": rep.get("data"), "backends": rows}


def render_md(s: dict[str, Any]) -> str:
    from nfdeploy.reports import markdown_table

    m = s.get("machine") or {}
    gpu = m.get("gpu")
    lines = ["# nfdeploy GPU suite", "",
             f"Started {s['started']}, wall time {s.get('wall_seconds', 0):.0f} s of a {s['budget_s']:.0f} s budget. "
             f"Device: **{s.get('device', '?')}**" + (f" ({gpu['name']}, CC {gpu['compute_capability']})" if gpu else "")
             + ".", ""]
    if m:
        v = m.get("versions", {})
        lines += [f"CPU: {m['cpu']['model']} ({m['cpu']['usable_cpus']} usable CPUs), torch threads {m['torch_threads']}. "
                  "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()
                                           if k not in ("onnxruntime_providers", "onnxruntime_module")) + ".", ""]
    lines += ["## Steps", "", markdown_table([{"step": r["name"], "status": r["status"], "seconds": f"{r['seconds']:.1f}",
                                               "note": r.get("reason", "")} for r in s["steps"]])]
    if s["skipped"]:
        lines += ["## Skipped", "", markdown_table([{"what": r["what"], "reason": r["reason"]} for r in s["skipped"]])]
    for name, p in s["parity"].items():
        lines += [f"## Parity: {name}", "", f"ok: {p.get('ok')}; data: {p.get('data')}", "",
                  markdown_table(p.get("backends") or [], ["name", "status", "rel_l2", "top1_agreement", "reason"])]
    for name, b in s["benches"].items():
        lines += [f"## Latency: {name}", "",
                  f"Median of the primary timing (device_ms on CUDA, host_ms on CPU), ms; warm-up "
                  f"{b['settings']['warmup_s']:.2g} s, min time {b['settings']['min_time_s']:.2g} s per cell.", ""]
        batches = sorted({r["batch"] for r in b["results"]})
        table: dict[str, dict[str, Any]] = {}
        for r in b["results"]:
            row = table.setdefault(r["backend"], {"backend": r["backend"], "scope": r["scope"]})
            row[f"b{r['batch']} ms"] = f"{r['median_ms']:.4g}"
            row[f"b{r['batch']} img/s"] = f"{r['throughput_ips']:.0f}"
        cols = ["backend", "scope"] + [f"b{n} {k}" for n in batches for k in ("ms", "img/s")]
        lines.append(markdown_table(list(table.values()), cols))
        if b["comparison"]:
            lines += ["Unfolded vs folded vs BN twin (same backend type):", "", markdown_table(
                [{"backend type": r["backend_type"], "batch": r["batch"],
                  "unfolded ms": f"{r['unfolded_ms']:.4g}" if r["unfolded_ms"] else "",
                  "NF folded ms": f"{r['nf_folded_ms']:.4g}" if r["nf_folded_ms"] else "",
                  "BN folded ms": f"{r['bn_folded_ms']:.4g}" if r["bn_folded_ms"] else "",
                  "folded speedup": f"{r['speedup_folded_vs_unfolded']:.3f}×" if r["speedup_folded_vs_unfolded"] else "",
                  "NF/BN folded": f"{r['ratio_nf_folded_to_bn_folded']:.3f}" if r["ratio_nf_folded_to_bn_folded"] else ""}
                 for r in sorted(b["comparison"], key=lambda r: (r["backend_type"], r["batch"]))])]
        if b["failed"] or b["over_budget"]:
            lines += ["Failed / not run:", "", markdown_table(
                [{"backend": r["name"], "batch": r["batch"], "reason": r["reason"]} for r in b["failed"] + b["over_budget"]])]
        lines.append(f"Full report: `{b['dir']}/bench.md`.\n")
    return "\n".join(lines)


def pack(work: Path, dest: Path) -> int:
    n = 0
    with tarfile.open(dest, "w:gz") as tar:
        for p in sorted(work.rglob("*")):
            rel = p.relative_to(work)
            if (p.is_file() and p.suffix in SMALL_SUFFIXES and not any(q.startswith(".") for q in rel.parts)
                    and p.resolve() != dest.resolve()):
                tar.add(p, arcname=str(rel))
                n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--budget-s", type=float, default=420.0, help="total wall-time budget (default 7 min)")
    ap.add_argument("--work", type=Path, default=None, help="heavy artifacts (runs, exports, reports); default OUT/work")
    ap.add_argument("--pack", action="store_true", help="also write OUT/reports.tar.gz of the small report files")
    ap.add_argument("--trt", choices=("auto", "off"), default="auto",
                    help="build TensorRT engines when a TensorRT that runs on this GPU is importable")
    ap.add_argument("--compile", action="store_true", help="also torch.compile backends (slow: recompiles per batch)")
    ap.add_argument("--min-time", type=float, default=1.0, help="timed seconds per backend and batch (shrinks to fit)")
    ap.add_argument("--warmup", type=float, default=0.5, help="warm-up seconds per backend and batch (shrinks to fit)")
    args = ap.parse_args(argv)

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = (args.work or out / "work").resolve()
    work.mkdir(parents=True, exist_ok=True)
    # Caches that would land in the home directory or /tmp stay under the work dir too.
    os.environ.setdefault("MPLCONFIGDIR", str(work / ".cache" / "matplotlib"))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(work / ".cache" / "torchinductor"))
    S = Suite(out, work, args.budget_s)
    summ = S.summary
    for sub in ("runs", "exports", "parity", "bench"):  # a fresh start: these are the suite's own dirs
        shutil.rmtree(work / sub, ignore_errors=True)

    # 1. environment
    cuda = torch.cuda.is_available()
    from nfdeploy.bench import bench_report, machine_info

    summ["device"] = "cuda" if cuda else "cpu"
    summ["machine"] = machine_info()
    caps = _capabilities(cuda)
    summ["capabilities"] = caps
    gpu = summ["machine"]["gpu"]
    S.log(f"device {summ['device']}" + (f": {gpu['name']} (CC {gpu['compute_capability']})" if gpu else "")
          + f"; torch {torch.__version__}; budget {args.budget_s:.0f} s; work dir {work}")
    for k, v in caps.items():
        S.log(f"  {k}: " + ("ok " + json.dumps({a: b for a, b in v.items() if a != 'ok'}) if v["ok"] else f"NOT available ({v['reason']})"))
    if not caps["export"]["ok"]:
        S.skip("ONNX export (both models)", caps["export"]["reason"])
    digits_plan = GPU_DIGITS if cuda else CPU_DIGITS
    r50_plan = GPU_R50 if cuda else CPU_R50
    summ["plan"] = {"nf_digits": digits_plan, "nf_resnet50": r50_plan, "compile": args.compile, "trt": args.trt}
    if not args.compile:
        S.skip("torch.compile backends", "off in the suite (--compile to enable): each precision x batch size "
                                         "recompiles, tens of seconds each")
    trt_ok = args.trt == "auto" and caps["tensorrt"]["ok"]
    if args.trt == "off":
        S.skip("TensorRT engines", "--trt off")
    elif not trt_ok:
        S.skip("TensorRT engines", caps["tensorrt"]["reason"])
    S.save()

    from nfdeploy.config import load_recipe
    from nfdeploy.export import ExportOptions, export_run
    from nfdeploy.train import train

    def trt_options(batches):
        if not trt_ok:
            return None
        from nfdeploy.export.tensorrt import BatchProfile, TrtBuildOptions

        return TrtBuildOptions(flavour=caps["tensorrt"]["flavour"],
                               profiles=(BatchProfile(min(batches), min(32, max(batches)), max(batches)),))

    quiet_log = lambda m: S.log("   " + str(m))  # noqa: E731
    dirs = {"digits_run": work / "runs" / "nf_digits", "digits_export": work / "exports" / "nf_digits",
            "r50_run": work / "runs" / "nf_resnet50_random", "r50_export": work / "exports" / "nf_resnet50"}

    # 2. train digits
    def do_train():
        recipe = load_recipe("nf_digits", {"train.epochs": digits_plan["epochs"]})
        res = train(recipe, dirs["digits_run"], progress=False, log=quiet_log)
        acc = res.summary.get("test_accuracy")
        return {"detail": {"epochs": digits_plan["epochs"], "device": str(res.summary.get("device", summ["device"])),
                           "test_accuracy": acc}}

    S.step("train nf_digits", do_train, limit=min(0.15 * args.budget_s, S.left() - 30))
    have_digits_run = (dirs["digits_run"] / "weights.safetensors").is_file()

    # 3. export digits
    def export_with_fallback(fn, what: str):
        """Export; if the TensorRT build fails, say why and export again without engines."""
        try:
            return fn(trt=True)
        except StepTimeout:
            raise
        except Exception as e:  # noqa: BLE001
            if not trt_ok or "TensorRT" not in str(e):
                raise
            S.skip(f"TensorRT engines for {what}", _one_line(e))
            return fn(trt=False)

    digits_exported = False
    if not have_digits_run:
        S.skip("export nf_digits", "no trained run (training failed)")
    elif caps["export"]["ok"]:
        def do_export_digits():
            r = export_with_fallback(lambda trt: export_run(
                dirs["digits_run"], dirs["digits_export"],
                ExportOptions(precisions=("fp32", "fp16"), check=caps["onnxruntime"]["ok"],
                              trt=trt_options(digits_plan["batches"]) if trt else None), log=quiet_log), "nf_digits")
            return {"detail": {"files": sorted(p.name for p in r.out_dir.iterdir()),
                               "checks": {k: v.get("status") for k, v in r.checks.items() if isinstance(v, dict)}}}

        S.step("export nf_digits", do_export_digits, limit=min(0.15 * args.budget_s, S.left() - 30))
        digits_exported = (dirs["digits_export"] / "manifest.json").is_file()

    # 4. nf_resnet50 with random weights
    size = r50_plan["input_size"]
    S.step(f"nf_resnet50 random run dir ({size}x{size})",
           lambda: {"detail": {"run_dir": str(write_random_run(dirs["r50_run"], "nf_resnet50", size))}},
           limit=min(60, S.left() - 30))
    have_r50_run = (dirs["r50_run"] / "weights.safetensors").is_file()
    r50_exported = False
    if have_r50_run and caps["export"]["ok"]:
        def do_export_r50():
            r = export_with_fallback(lambda trt: export_random_run(
                dirs["r50_run"], dirs["r50_export"], ("fp32", "fp16"),
                trt_options(r50_plan["batches"]) if trt else None, caps["onnxruntime"]["ok"], quiet_log), "nf_resnet50")
            return {"detail": {"files": sorted(p.name for p in r.out_dir.iterdir()),
                               "checks": {k: v.get("status") for k, v in r.checks.items() if isinstance(v, dict)}}}

        S.step("export nf_resnet50", do_export_r50, limit=min(0.3 * args.budget_s, S.left() - 30))
        r50_exported = (dirs["r50_export"] / "manifest.json").is_file()

    # 5. parity, in a child process: a hard time limit that cannot leave this process's CUDA state broken
    try:
        import nfdeploy.parity  # noqa: F401
        parity_ok = hasattr(nfdeploy.parity, "parity_report")
        if not parity_ok:
            S.skip("parity", "parity: not available (nfdeploy.parity has no parity_report)")
    except Exception as e:  # noqa: BLE001 - written concurrently; absent or broken is "not available"
        parity_ok = False
        S.skip("parity", f"parity: not available ({_one_line(e, 200)})")
    parity_only = None if args.compile else ["cpu", "eager", "cudagraph", "onnxruntime", "tensorrt"]
    for name, exported, share in (("nf_digits", digits_exported, 0.08), ("nf_resnet50", r50_exported, 0.15)):
        if not parity_ok:
            continue
        if not exported:
            S.skip(f"parity {name}", "no export dir (see the export step)")
            continue
        key = "digits_export" if name == "nf_digits" else "r50_export"
        limit = min(share * args.budget_s, S.left() - 60)

        def do_parity(key=key, name=name, limit=limit):
            pdir = work / "parity" / name
            run_child(PARITY_CHILD, [str(REPO), str(dirs[key]), str(pdir), json.dumps(parity_only)],
                      timeout=max(limit - 2, 1), log=quiet_log)
            rep = json.loads((pdir / "parity.json").read_text())
            summ["parity"][name] = {"dir": str(pdir), **_parity_digest(rep)}
            return {"detail": {"ok": rep.get("ok"), "failed": rep.get("failed")}}

        S.step(f"parity {name}", do_parity, limit=limit)

    # 6. latency
    def bench_source(name: str, run_key: str, export_key: str, exported: bool):
        if exported:
            return dirs[export_key]
        reason = caps["export"]["reason"] if not caps["export"]["ok"] else "the export step failed"
        return torch_only_source(dirs[run_key], dirs[export_key], reason)

    for name, run_key, export_key, exported, have_run, plan, share in (
            ("nf_digits", "digits_run", "digits_export", digits_exported, have_digits_run, digits_plan, 0.35),
            ("nf_resnet50", "r50_run", "r50_export", r50_exported, have_r50_run, r50_plan, 1.0)):
        if not have_run:
            S.skip(f"bench {name}", "no run dir")
            continue
        budget = (S.left() - 15) * share
        bdir = work / "bench" / name

        def do_bench(name=name, run_key=run_key, export_key=export_key, exported=exported, plan=plan, budget=budget,
                     bdir=bdir):
            src = bench_source(name, run_key, export_key, exported)
            rep = bench_report(src, bdir, batches=plan["batches"], cpu_batches=plan["cpu_batches"],
                               min_time=args.min_time, warmup=args.warmup, compile=args.compile,
                               budget_s=budget, log=quiet_log)
            summ["benches"][name] = {"dir": str(bdir), **_bench_digest(rep)}
            return {"detail": {"cells": len(rep["results"]) + len(rep["comparison"]["results"]),
                               "over_budget": len(rep["over_budget"]), "failed": len(rep["failed"])}}

        # bench_report keeps to its own budget; the alarm is a backstop (export of the comparison ONNX, a hang).
        S.step(f"bench {name}", do_bench, limit=budget + 30 if budget > 5 else budget)
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()

    summ["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    S.save()
    from nfdeploy.artifacts import atomic_write_text

    atomic_write_text(out / "suite.md", render_md(summ))
    if args.pack:
        n = pack(work, out / "reports.tar.gz")
        S.log(f"packed {n} report files into {out / 'reports.tar.gz'}")
    bad = [r["name"] for r in summ["steps"] if r["status"] not in ("ok", "skipped")]
    S.log(f"done in {S.elapsed():.0f} s (budget {args.budget_s:.0f} s); steps not ok: {bad or 'none'}; "
          f"summary {out / 'suite.json'}, {out / 'suite.md'}")
    S.save()
    atomic_write_text(out / "suite.md", render_md(summ))
    S.logfile.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
