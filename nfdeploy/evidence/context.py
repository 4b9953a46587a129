"""What every phase of the suite shares: its options, the sizes per device (SuitePlan), the log, the phases'
titles and budgets, what this machine can run (capabilities), and the workloads, made once per work dir."""

from __future__ import annotations

import importlib
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from nfdeploy.artifacts import MANIFEST
from nfdeploy.artifacts.run_dir import WEIGHTS
from nfdeploy.errors import UserError, one_line
from nfdeploy.evidence.bundle import BUNDLE_EXPORT, relocate_bundle
from nfdeploy.evidence.steps import Phase
from nfdeploy.evidence.workloads import export_onnx, write_torch_only_export
from nfdeploy.machine import machine_info
from nfdeploy.train.random_run import write_random_run

PHASE_TITLES = {
    1: "torch parity and batch invariance",
    2: "latency (torch CUDA)",
    3: "ONNX Runtime CUDA EP",
    4: "TensorRT-RTX",
    5: "serving (Triton, concurrency sweep)",
}
DEFAULT_BUDGET = {1: 240.0, 2: 270.0, 3: 300.0, 4: 60.0, 5: 240.0}
TORCH_PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
INVARIANCE_MODES = ("eager", "cudagraph")


class SuiteError(UserError, ValueError):
    """Bad suite options; one line."""


@dataclass
class SuiteOptions:
    """One invocation of the suite: where the bundle is, where the files that come back go (out), where
    exports, runs and reports are made (work), which phases in which order, and the time limits."""

    out: Path
    bundle: Path
    work: Path = Path("/tmp/gs-work")
    phases: Sequence[int] = (1, 2, 3, 4)
    deadline_s: float = 540.0
    budget: dict[int, float] = field(default_factory=dict)  # phase -> seconds (default: DEFAULT_BUDGET)
    compile: bool = False
    tiny: bool = False

    def __post_init__(self) -> None:
        bad = [p for p in self.phases if p not in PHASE_TITLES]
        if bad:
            raise SuiteError(f"unknown phase(s) {bad}; phases: {sorted(PHASE_TITLES)}")

    @classmethod
    def parse(cls, phase: str, budget: Sequence[str], **kw: Any) -> SuiteOptions:
        """--phase "1,2" and --budget ["N=SECONDS", ...] as given on a command line."""
        try:
            phases = [int(p) for p in phase.split(",") if p.strip()]
            budgets = {int(k): float(v) for k, v in (b.split("=") for b in budget)}
        except ValueError:
            raise SuiteError("--phase takes e.g. 1,2 and --budget N=SECONDS") from None
        return cls(phases=phases, budget=budgets, **kw)


class SuitePlan:
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
        return dict(vars(self))


def capabilities() -> dict[str, Any]:
    """What this machine can run, with the reason for each thing it cannot (recorded, and shown)."""
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
            except Exception as e:  # noqa: BLE001 - recorded: the CUDA EP's libraries were not found
                caps["onnxruntime"]["preload_dlls"] = one_line(e, 200)
        caps["onnxruntime"]["providers"] = ort.get_available_providers()
    gpu = machine_info()["gpu"]
    if gpu:
        caps["gpu"] = {
            "name": gpu["name"],
            "compute_capability": gpu["compute_capability"],
            "sms": gpu["multiprocessors"],
            "memory_gib": round(gpu["memory_gib"], 1),
            "cuda": gpu["cuda_runtime"],
            "cudnn": gpu["cudnn"],
        }
    return caps


class Suite:
    """The state one invocation shares between its phases: options, plan, device, log, and the workloads."""

    def __init__(self, options: SuiteOptions):
        self.options = options
        self.out: Path = options.out.resolve()
        self.work: Path = options.work.resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("MPLCONFIGDIR", str(self.work / ".cache" / "matplotlib"))
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(self.work / ".cache" / "inductor"))
        self.t0 = time.perf_counter()
        self.deadline = self.t0 + options.deadline_s
        self.logfile = open(self.out / "suite.log", "a", encoding="utf-8")  # closed by close()
        self.cuda = torch.cuda.is_available()
        self.plan = SuitePlan(self.cuda, options.tiny)
        self.dev = "cuda" if self.cuda else "cpu"
        self.exports = self.work / "exports"
        self.runs = self.work / "runs"

    def log(self, msg: str) -> None:
        line = f"[{datetime.now():%H:%M:%S} +{time.perf_counter() - self.t0:6.1f}s] {msg}"
        print(line, flush=True)
        self.logfile.write(line + "\n")
        self.logfile.flush()

    def sublog(self, msg: Any) -> None:
        """A library call's log line, indented under the step that made it."""
        self.log("   " + str(msg))

    def close(self) -> None:
        self.logfile.close()

    def phase(self, n: int) -> Phase:
        budget = self.options.budget.get(n, DEFAULT_BUDGET[n])
        ph = Phase(n, PHASE_TITLES[n], self.out, self.work, budget, self.deadline, self.log)
        ph.summary["plan"] = self.plan.describe()
        ph.summary["device"] = self.dev
        return ph

    # ------------------------------------------------------------------------------- workloads
    def digits_export(self) -> Path:
        """The carried digits export, relocated under the work dir (once per work dir)."""
        export = self.work / BUNDLE_EXPORT
        if not (export / MANIFEST).is_file():
            relocate_bundle(self.options.bundle, self.work)
        return export

    def r50_run(self) -> Path:
        run = self.runs / "nf_resnet50"
        if not (run / WEIGHTS).is_file():
            write_random_run(run, "nf_resnet50", self.plan.r50_size)
        return run

    def r50_torch_export(self) -> Path:
        """nf_resnet50 for the torch backends: a manifest without ONNX (export costs time phase 1 lacks)."""
        export = self.exports / "nf_resnet50-torch"
        if not (export / MANIFEST).is_file():
            write_torch_only_export(self.r50_run(), export, "phase 1/2 run torch backends only; phase 3 exports ONNX")
        return export

    def r50_onnx_export(self, precisions: tuple[str, ...] = ("fp32", "fp16")) -> Path:
        export = self.exports / "nf_resnet50"
        if not (export / MANIFEST).is_file():
            export_onnx(self.r50_run(), export, self.sublog, precisions=precisions, check=False)
        return export

    def torch_modes(self) -> tuple[str, ...]:
        """torch's CUDA execution modes this invocation runs."""
        return INVARIANCE_MODES + (("compile",) if self.options.compile else ())

    def torch_only(self) -> list[str]:
        """Backend-name substrings for the torch parity of phase 1."""
        return ["torch-cpu-fp32"] + [
            f"torch-cuda-{t}-folded-{m}" for t in ("fp32", "fp32-tf32", "fp16", "bf16") for m in self.torch_modes()
        ]


__all__ = [
    "DEFAULT_BUDGET",
    "INVARIANCE_MODES",
    "PHASE_TITLES",
    "TORCH_PRECISIONS",
    "Suite",
    "SuiteError",
    "SuiteOptions",
    "SuitePlan",
    "capabilities",
]
