"""The precision table: one definition per precision, read by export, runtimes, parity, bench and tests.

A precision says how numbers are stored and computed (torch dtype, math mode), where its artifacts
live (ONNX file, TensorRT engine file) and how close its outputs must come to the float64 reference
(relative L2 error of the logits, minimum top-1 agreement). A non-finite output fails whatever the
tolerance.

tf32 is float32 storage with TF32 convolutions and matmuls (CUDA only): it has no files of its own,
it is how a GPU runs the fp32 graph unless TF32 is switched off, so its backends are named
"...-fp32-tf32-..." and judged by tf32's tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Precision:
    name: str
    torch_dtype: torch.dtype
    tag: str  # how the precision appears in a backend name
    rel_l2: float  # ||out - ref|| / ||ref|| of the logits vs the float64 reference, at most
    top1_agreement: float  # share of samples whose arg-max equals the reference's, at least
    onnx_file: str | None = None  # the export's ONNX variant (None: runs another precision's graph)
    engine_file: str | None = None  # the export's TensorRT engine built from that graph
    graph: str | None = None  # the precision of the graph it runs when it has no file of its own
    math_mode: str = ""

    def tolerance(self) -> dict[str, float]:
        return {"rel_l2": self.rel_l2, "top1_agreement": self.top1_agreement}


PRECISIONS: dict[str, Precision] = {p.name: p for p in (
    Precision("fp64", torch.float64, "fp64", 1e-10, 1.0, math_mode="ieee fp64"),
    Precision("fp32", torch.float32, "fp32", 1e-5, 1.0, "model.onnx", "model.engine", math_mode="ieee fp32"),
    Precision("tf32", torch.float32, "fp32-tf32", 1e-3, 0.995, graph="fp32", math_mode="tf32 conv/matmul"),
    Precision("fp16", torch.float16, "fp16", 1e-2, 0.995, "model.fp16.onnx", "model.fp16.engine",
              math_mode="fp16 storage and compute"),
    Precision("bf16", torch.bfloat16, "bf16", 1e-2, 0.995, "model.bf16.onnx", "model.bf16.engine",
              math_mode="bf16 storage and compute"),
)}
# The precisions an export writes files for, in order (fp32 always first: the others are checked against it).
EXPORT_PRECISIONS: tuple[str, ...] = tuple(p for p, v in PRECISIONS.items() if v.onnx_file)


def get_precision(name: str) -> Precision:
    try:
        return PRECISIONS[name]
    except KeyError:
        raise ValueError(f"unknown precision {name!r}; known: {', '.join(PRECISIONS)}") from None


# float32 rounding error grows with depth: a deep model's float32 forward pass in the reference framework
# (the unfolded torch model, as its author runs it) can itself sit near a fixed 1e-5. A backend is judged
# against max(the table's floor, REFERENCE_ERROR_FACTOR x that framework's own error in the same dtype on
# the same inputs): 2 leaves room for one more independent rounding path of the same size (the folded
# graph rounds differently, not worse), and no more — a backend twice as far off as torch itself fails.
REFERENCE_ERROR_FACTOR = 2.0


def judged_tolerance(precision: str, framework_rel_l2: float | None) -> dict[str, Any]:
    """The tolerance a backend of `precision` is judged by: rel L2 ≤ max(floor, REFERENCE_ERROR_FACTOR ×
    `framework_rel_l2`), the reference framework's own error in that dtype (None: the floor alone). Both
    numbers are kept in the returned dict ("floor_rel_l2", "framework_rel_l2") so reports can state them."""
    p = get_precision(precision)
    fw = framework_rel_l2 if framework_rel_l2 is not None and framework_rel_l2 == framework_rel_l2 else None
    rel = p.rel_l2 if fw is None else max(p.rel_l2, REFERENCE_ERROR_FACTOR * fw)
    return {"rel_l2": rel, "top1_agreement": p.top1_agreement, "floor_rel_l2": p.rel_l2, "framework_rel_l2": fw,
            "rule": f"max({p.rel_l2:g}, {REFERENCE_ERROR_FACTOR:g} x framework {precision} error)"}


def tolerances() -> dict[str, dict[str, Any]]:
    """{precision: {"rel_l2", "top1_agreement"}} for reports."""
    return {p.name: p.tolerance() for p in PRECISIONS.values()}


def describe_tolerances() -> str:
    return "; ".join(f"{p.name}: rel L2 ≤ {p.rel_l2:g}, top-1 agreement ≥ {p.top1_agreement:.1%}"
                     for p in PRECISIONS.values())


__all__ = ["EXPORT_PRECISIONS", "PRECISIONS", "REFERENCE_ERROR_FACTOR", "Precision", "describe_tolerances", "get_precision",
           "judged_tolerance", "tolerances"]
