"""The precision table: one definition per precision, read by export, runtimes, parity, bench and tests.

A precision says how numbers are stored and computed (torch dtype, math mode), where its artifacts
live (ONNX file, TensorRT engine file) and how close its outputs must come to the float64 reference
(relative L2 error of the logits, minimum top-1 agreement). A non-finite output fails whatever the
tolerance.

tf32 is float32 storage with TF32 convolutions and matmuls (CUDA only): it has no files of its own,
it is how a GPU runs the fp32 graph unless TF32 is switched off, so its backends are named
"...-fp32-tf32-..." and judged by tf32's tolerance.

int8 is explicit Q/DQ (QuantizeLinear/DequantizeLinear in the ONNX graph), made from the folded fp32
graph by calibration (nfdeploy.export.quantize), not from a torch dtype: its torch_dtype is float32,
the dtype of the graph it is quantized from (`quantized_from`). Two forms, one per runtime: "int8"
(symmetric int8 activations and weights, S8S8: the form TensorRT's strongly typed builder wants; Q/DQ
only on the inputs of Conv/Gemm/Add) and "int8-ort" (asymmetric uint8 activations, symmetric int8
weights, U8S8, Q/DQ around every op ONNX Runtime's CPU EP fuses into QLinear kernels). A quantized
graph is not held to a relative L2 error (it is reported, with SQNR): it passes when top-1 agreement
with the float64 reference is ≥ 99% and its accuracy on labelled data is at most 0.5 points below
the reference's (`max_accuracy_drop`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Precision:
    name: str
    torch_dtype: torch.dtype
    tag: str  # how the precision appears in a backend name
    rel_l2: float | None  # ||out - ref|| / ||ref|| of the logits vs the float64 reference, at most (None: not judged)
    top1_agreement: float  # share of samples whose arg-max equals the reference's, at least
    onnx_file: str | None = None  # the export's ONNX variant (None: runs another precision's graph)
    engine_file: str | None = None  # the export's TensorRT engine built from that graph
    graph: str | None = None  # the precision of the graph it runs when it has no file of its own
    math_mode: str = ""
    max_accuracy_drop: float | None = None  # reference accuracy - accuracy, at most (labelled data only)
    quantized_from: str | None = None  # the precision whose graph is calibrated into this one (int8)

    def tolerance(self) -> dict[str, float]:
        """The judged limits only: a key that is absent is not judged."""
        tol = {
            "rel_l2": self.rel_l2,
            "top1_agreement": self.top1_agreement,
            "max_accuracy_drop": self.max_accuracy_drop,
        }
        return {k: v for k, v in tol.items() if v is not None}


PRECISIONS: dict[str, Precision] = {
    p.name: p
    for p in (
        Precision("fp64", torch.float64, "fp64", 1e-10, 1.0, math_mode="ieee fp64"),
        Precision("fp32", torch.float32, "fp32", 1e-5, 1.0, "model.onnx", "model.engine", math_mode="ieee fp32"),
        Precision("tf32", torch.float32, "fp32-tf32", 1e-3, 0.995, graph="fp32", math_mode="tf32 conv/matmul"),
        Precision(
            "fp16",
            torch.float16,
            "fp16",
            1e-2,
            0.995,
            "model.fp16.onnx",
            "model.fp16.engine",
            math_mode="fp16 storage and compute",
        ),
        Precision(
            "bf16",
            torch.bfloat16,
            "bf16",
            1e-2,
            0.995,
            "model.bf16.onnx",
            "model.bf16.engine",
            math_mode="bf16 storage and compute",
        ),
        Precision(
            "int8",
            torch.float32,
            "int8",
            None,
            0.99,
            "model.int8.onnx",
            "model.int8.engine",
            math_mode="int8 Q/DQ, S8S8 (TensorRT form)",
            max_accuracy_drop=0.005,
            quantized_from="fp32",
        ),
        Precision(
            "int8-ort",
            torch.float32,
            "int8-ort",
            None,
            0.99,
            "model.int8.ort.onnx",
            math_mode="int8 Q/DQ, U8S8 (ONNX Runtime CPU form)",
            max_accuracy_drop=0.005,
            quantized_from="fp32",
        ),
    )
}
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


def judged_tolerance(
    precision: str, framework_rel_l2: float | None, framework_top1: float | None = None
) -> dict[str, Any]:
    """The tolerance a backend of `precision` is judged by: the table's limits, with rel L2 raised to
    max(floor, REFERENCE_ERROR_FACTOR × `framework_rel_l2`), the reference framework's own error in that
    dtype (None: the floor alone), and top-1 agreement lowered to `framework_top1`, the framework's own
    agreement in that dtype, where that is below the table's: a backend is not held to more than the
    framework itself meets on these inputs (an undertrained model's near-tied logits flip in bf16).
    Precisions without a rel L2 rule (int8) keep their own limits. The floors and the framework figures
    are kept in the dict ("floor_rel_l2", "framework_rel_l2", "floor_top1", "framework_top1") for the reports."""
    p = get_precision(precision)
    tol: dict[str, Any] = p.tolerance()
    if "rel_l2" not in tol:
        return tol
    if framework_top1 is not None and "top1_agreement" in tol and framework_top1 < tol["top1_agreement"]:
        tol.update(floor_top1=tol["top1_agreement"], framework_top1=framework_top1, top1_agreement=framework_top1)
    if framework_rel_l2 is not None and not math.isfinite(framework_rel_l2):
        # The framework itself overflowed (or produced NaN) in this dtype: its error says nothing about
        # what this precision can reach, and an infinite tolerance would leave only the top-1 rule.
        tol.update(
            floor_rel_l2=p.rel_l2,
            framework_rel_l2=None,
            rule=f"{p.rel_l2:g} (the table's floor: the framework's own {precision} error is "
            f"{framework_rel_l2}, so the framework-relative rule does not apply)",
        )
        return tol
    fw = framework_rel_l2
    tol["rel_l2"] = p.rel_l2 if fw is None else max(p.rel_l2, REFERENCE_ERROR_FACTOR * fw)
    tol.update(
        floor_rel_l2=p.rel_l2,
        framework_rel_l2=fw,
        rule=f"max({p.rel_l2:g}, {REFERENCE_ERROR_FACTOR:g} x framework {precision} error)",
    )
    return tol


def tolerances() -> dict[str, dict[str, Any]]:
    """{precision: its judged limits} for reports."""
    return {p.name: p.tolerance() for p in PRECISIONS.values()}


def describe_tolerance(tol: dict[str, float]) -> str:
    """One tolerance dict (Precision.tolerance()) in words."""
    words = {
        "rel_l2": "rel L2 ≤ {:g}",
        "top1_agreement": "top-1 agreement ≥ {:.1%}",
        "max_accuracy_drop": "accuracy drop ≤ {:.1%}",
    }
    return ", ".join(words[k].format(v) for k, v in tol.items() if k in words)


def describe_tolerances() -> str:
    return "; ".join(f"{p.name}: {describe_tolerance(p.tolerance())}" for p in PRECISIONS.values())


__all__ = [
    "EXPORT_PRECISIONS",
    "PRECISIONS",
    "REFERENCE_ERROR_FACTOR",
    "Precision",
    "describe_tolerance",
    "describe_tolerances",
    "get_precision",
    "judged_tolerance",
    "tolerances",
]
