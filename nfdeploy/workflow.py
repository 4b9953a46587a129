"""The whole pipeline as one library call: train → export (ONNX; TensorRT engines when a flavour is
installed) → parity → bench. Every option is validated before any work starts."""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nfdeploy.artifacts.run_dir import WEIGHTS
from nfdeploy.check.parity import ParityResult, parity_report
from nfdeploy.config import load_recipe
from nfdeploy.errors import UserError
from nfdeploy.export import export_options, export_run
from nfdeploy.perf import BenchOptions, BenchResult, bench_report, parse_batches
from nfdeploy.train import train

RUN, EXPORT, REPORTS = "run", "export", "reports"


class PipelineError(UserError, ValueError):
    """A pipeline option or output dir that cannot work; one line, raised before any work."""


@dataclass
class PipelineResult:
    run_dir: Path
    export_dir: Path
    reports_dir: Path
    test_accuracy: float
    parity: ParityResult = field(repr=False)
    bench: BenchResult = field(repr=False)

    @property
    def ok(self) -> bool:
        return self.parity.ok


def tensorrt_installed() -> bool:
    return any(importlib.util.find_spec(m) for m in ("tensorrt", "tensorrt_rtx"))


def run_pipeline(
    recipe: str = "nf_digits",
    out: str | Path = "runs/pipeline",
    *,
    overrides: dict[str, Any] | None = None,
    preset: str = "default",
    trt: bool | None = None,
    batches: str | Sequence[int] = (1, 8, 32),
    min_time: float = 1.0,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> PipelineResult:
    """Train `recipe` into OUT/run, export to OUT/export, write parity and bench reports to OUT/reports.
    `trt` None: build engines when a TensorRT flavour is installed. OUT is replaced only if it holds a
    previous pipeline (a run dir with weights), never a folder of something else."""
    out = Path(out)
    sizes = parse_batches(batches)
    if not min_time > 0:
        raise PipelineError(f"min_time must be positive, got {min_time}")
    rec = load_recipe(recipe, overrides or {})
    opts = export_options(preset, engines=tensorrt_installed() if trt is None else trt)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not (out / RUN / WEIGHTS).is_file():
            raise PipelineError(
                f"{out} exists and is not a previous pipeline dir (no {RUN}/{WEIGHTS}); choose another --out"
            )
        shutil.rmtree(out)
    log("[1/4] train")
    run = train(rec, out / RUN, progress=progress, log=log)
    log(f"test accuracy {run.summary['test_accuracy']:.2%}")
    log("[2/4] export")
    export_run(run.run_dir, out / EXPORT, opts, log=log)
    log("[3/4] parity")
    parity = parity_report(out / EXPORT, out / REPORTS, log=log)
    log("[4/4] bench")
    bench = bench_report(
        out / EXPORT, out / REPORTS, BenchOptions(batches=sizes, min_time=min_time, warmup=min(1.0, min_time)), log=log
    )
    return PipelineResult(run.run_dir, out / EXPORT, out / REPORTS, run.summary["test_accuracy"], parity, bench)


__all__ = ["EXPORT", "REPORTS", "RUN", "PipelineError", "PipelineResult", "run_pipeline", "tensorrt_installed"]
