"""Phase 5: serving. `nfdeploy serve` (the bundled tritonserver, a Python-backend model) on each GPU backend of
the digits export in turn, load-tested at concurrency 1, 4, 16 with every response compared bitwise to the same
sample alone (nfdeploy.serve.loadtest); on a machine without a GPU, onnxruntime-cpu-fp32. Needs nfdeploy[serve]
and an interpreter with a shared libpython; a step that cannot start a server records why. Not in the default
phase list: ask for it (--phase 5).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nfdeploy.evidence.context import Suite
from nfdeploy.evidence.steps import Phase
from nfdeploy.serve.loadtest import LoadOptions, loadtest


def run_phase5(suite: Suite) -> None:
    ph = suite.phase(5)
    backends = (
        ["onnxruntime-cuda-fp32", "torch-cuda-fp32-folded-eager", "torch-cuda-fp16-folded-eager"]
        if suite.cuda
        else ["onnxruntime-cpu-fp32"]
    )
    for backend in backends:
        ph.step(
            f"serve + loadtest nf_digits {backend}",
            lambda backend=backend: serve_sweep(suite, ph, suite.digits_export(), backend),
            limit=max(30.0, ph.left() / 2),
            reserve=10,
        )
    ph.save()


def serve_sweep(suite: Suite, ph: Phase, export: Path, backend: str) -> dict[str, Any]:
    """Serve `backend` of the export and load-test it (the one loadtest call of the suite); a row per level."""
    tiny = suite.options.tiny
    opts = LoadOptions(
        concurrency=(1, 4, 16),
        window_s=0.5 if tiny else 1.0,
        max_windows=3 if tiny else 6,
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
        log=suite.sublog,
    ).to_dict()
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
    ph.results[f"serving {backend}"] = {
        "levels": rows,
        "parity": rep["served"]["parameters"].get("nfdeploy.check.parity"),
    }
    return {"levels": len(rows), "min_bitwise_share": min(r["bitwise_share"] or 0 for r in rows)}


__all__ = ["run_phase5", "serve_sweep"]
