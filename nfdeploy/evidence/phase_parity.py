"""Phase 1: torch parity and batch invariance.

Every torch backend (CPU fp32; CUDA fp32 with TF32 off, TF32, fp16, bf16; eager and CUDA graph; torch.compile
with --compile) against the float64 reference, on the carried digits export and on nf_resnet50 (seeded random
weights, 224²); ONNX Runtime CPU on the same carried ONNX; outputs saved for the CPU-vs-GPU comparison; the
batch-invariance matrix (NF folded beside the folded BN twin, per precision and mode); a few epochs of digits
training on the GPU if time is left.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from nfdeploy.artifacts import atomic_write_json
from nfdeploy.check.backends import export_backends, load_export_source
from nfdeploy.check.batch_matrix import DEFAULT_BATCHES, batch_invariance_matrix, matrix_rows
from nfdeploy.check.parity import load_parity_data
from nfdeploy.config import load_recipe
from nfdeploy.errors import one_line
from nfdeploy.evidence.bundle import read_bundle_info
from nfdeploy.evidence.context import INVARIANCE_MODES, TORCH_PRECISIONS, Suite, capabilities
from nfdeploy.evidence.saved_parity import parity_digest, parity_with_outputs
from nfdeploy.evidence.steps import Phase
from nfdeploy.evidence.workloads import twin_backends
from nfdeploy.machine import machine_info
from nfdeploy.precision import get_precision
from nfdeploy.render import markdown_table
from nfdeploy.train import train


def run_phase1(suite: Suite) -> None:
    ph = suite.phase(1)
    caps = ph.step("environment", capabilities, limit=60)
    if caps:
        atomic_write_json(ph.dir / "environment.json", {"capabilities": caps, "machine": machine_info()})
    if not suite.cuda:
        ph.skip("torch CUDA backends (all precisions and modes)", "no CUDA device visible to torch")
    if not suite.options.compile:
        ph.skip("torch.compile backends", "left out (--compile): each precision x batch recompiles, tens of s each")
    ph.summary["bundle"] = read_bundle_info(suite.options.bundle)
    p = suite.plan
    ph.step(
        "parity nf_digits (carried export)",
        lambda: torch_parity(
            suite,
            ph,
            "nf_digits",
            suite.digits_export(),
            suite.torch_only() + ["onnxruntime-cpu"],
            p.digits_samples,
            p.digits_invariance,
            batch_matrix=True,
        ),
        limit=0.35 * ph.summary["budget_s"],
    )
    ph.step(
        "batch invariance nf_digits (NF folded vs BN twin)",
        lambda: twin_invariance(suite, ph, "nf_digits", suite.digits_export(), p.digits_invariance),
        limit=40,
    )
    ph.step(
        f"parity nf_resnet50 (random weights, {p.r50_size}²)",
        lambda: torch_parity(
            suite, ph, "nf_resnet50", suite.r50_torch_export(), suite.torch_only(), p.r50_samples, p.r50_invariance
        ),
        limit=0.35 * ph.summary["budget_s"],
    )
    ph.step(
        "batch invariance nf_resnet50 (NF folded vs BN twin)",
        lambda: twin_invariance(suite, ph, "nf_resnet50", suite.r50_torch_export(), p.r50_invariance),
        limit=60,
    )
    if suite.cuda:
        ph.step(f"train nf_digits on the GPU ({p.train_epochs} epochs)", lambda: train_digits(suite), limit=60)
    else:
        ph.skip("train nf_digits on the GPU", "no CUDA device visible to torch")
    ph.save()


def torch_parity(
    suite: Suite,
    ph: Phase,
    name: str,
    export: Path,
    only: list[str],
    samples: int,
    inv: int,
    batch_matrix: bool = False,
) -> dict[str, Any]:
    """Parity (outputs saved) of the export's backends named by `only`; its digest goes into the summary."""
    backends = export_backends(load_export_source(export), compile=suite.options.compile, tensorrt=False)
    rep = parity_with_outputs(
        export,
        ph.dir / f"parity-{name}",
        only=only,
        backends=backends,
        max_samples=samples,
        invariance_samples=inv,
        batch_matrix=batch_matrix,
        log=suite.sublog,
    )
    ph.results[f"parity {name}"] = parity_digest(rep)
    return {"ok": rep["ok"], "failed": rep["failed"], "inputs_sha256": rep["inputs_sha256"]}


def twin_invariance(suite: Suite, ph: Phase, name: str, export: Path, samples: int) -> dict[str, Any]:
    """The batch-invariance matrix (nfdeploy.check.batch_matrix, parity's protocol) of the folded BN twin (eval
    mode) per precision and mode, beside the NF rows of the parity report."""
    source = load_export_source(export)
    x = load_parity_data(source, None, None, samples).x[:samples]
    precs = TORCH_PRECISIONS if suite.cuda else ("fp32",)
    matrix = dict(ph.results.get(f"parity {name}", {}).get("batch_invariance", {}))
    for b in twin_backends(source, precs, INVARIANCE_MODES if suite.cuda else ("",), suite.dev):
        if b.unavailable_reason():
            continue
        try:
            with b:
                matrix[f"BN twin folded (eval) {b.name}"] = batch_invariance_matrix(
                    b.run, x, get_precision(b.precision).torch_dtype, DEFAULT_BATCHES
                )
        except Exception as e:  # noqa: BLE001 - e.g. bf16 on a GPU without it: a finding
            matrix[f"BN twin folded (eval) {b.name}"] = {"error": {"skipped": one_line(e, 200)}}
    atomic_write_json(ph.dir / f"invariance-{name}.json", matrix)
    ph.results[f"batch invariance {name}"] = {"matrix": matrix, "markdown": markdown_table(matrix_rows(matrix))}
    return {"rows": len(matrix)}


def train_digits(suite: Suite) -> dict[str, Any]:
    """A few epochs of the digits recipe on this machine's device."""
    t = time.perf_counter()
    epochs = suite.plan.train_epochs
    res = train(
        load_recipe("nf_digits", {"train.epochs": epochs}),
        suite.runs / "nf_digits-gpu",
        progress=False,
        log=suite.sublog,
    )
    return {
        "epochs": epochs,
        "seconds": time.perf_counter() - t,
        **{k: res.summary.get(k) for k in ("test_accuracy", "device", "best_test_accuracy") if k in res.summary},
    }


__all__ = ["run_phase1", "torch_parity", "train_digits", "twin_invariance"]
