"""Comparing outputs with a reference, and judging them by the precision table.

All errors are computed in float64 on the logits: max_abs = max|out - ref|, max_rel = max_abs / max|ref|,
rel_l2 = ||out - ref|| / ||ref||, cosine similarity, SQNR in dB = 10 log10(sum ref² / sum (out - ref)²)
(None when out equals ref exactly), top-1 agreement = share of samples whose arg-max equals the reference's.
A non-finite value in the output fails the comparison, whatever the tolerance
(`nan <= tol` is False, but the failure must be explicit, with its count).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from nfdeploy.precision import get_precision


def _to_double(a: Any) -> torch.Tensor:
    return (torch.from_numpy(np.asarray(a)) if not isinstance(a, torch.Tensor) else a.detach().cpu()).double()


@torch.no_grad()
def compare_outputs(ref: Any, out: Any) -> dict[str, float]:
    """max_abs, max_rel, rel_l2 and cosine of `out` against `ref` (tensors or arrays), in float64."""
    r, o = _to_double(ref), _to_double(out)
    d = o - r
    return {
        "max_abs": float(d.abs().max()),
        "max_rel": float(d.abs().max() / r.abs().max()),
        "rel_l2": float(d.norm() / r.norm()),
        "sqnr_db": sqnr_db(r, o),
        "cosine": float(torch.nn.functional.cosine_similarity(o.flatten(), r.flatten(), dim=0)),
    }


def ulp_error(out: Any, ref: Any, dtype: torch.dtype) -> np.ndarray:
    """|out - ref| in units in the last place of `dtype` at each reference value (float64 array; the
    reference is never rounded to `dtype` first). The float64 spacing at |r| (np.spacing, 2^floor(log2|r|)
    × 2^-52) scaled by dtype's epsilon over float64's gives dtype's spacing at that binade: exact for every
    dtype, bf16 included (which numpy cannot represent), and finite beyond dtype's range. |r| below dtype's
    smallest normal counts as the smallest normal (the subnormal spacing). 0: identical; 1: one step."""
    o, r = np.asarray(_to_double(out).numpy()), np.asarray(_to_double(ref).numpy())
    fi = torch.finfo(dtype)
    ulp = np.spacing(np.maximum(np.abs(r), fi.tiny)) * (fi.eps / np.finfo(np.float64).eps)
    return np.abs(o - r) / ulp


def sqnr_db(ref: Any, out: Any) -> float | None:
    """Signal-to-quantization-noise ratio of `out` against `ref` in dB; None when they are identical."""
    r, o = _to_double(ref), _to_double(out)
    noise = float((o - r).square().sum())
    return None if noise == 0 else float(10 * torch.log10(r.square().sum() / noise))


def top1_agreement(a: Any, b: Any) -> float:
    return float((_to_double(a).argmax(1) == _to_double(b).argmax(1)).double().mean())


@torch.no_grad()
def framework_errors(
    model: torch.nn.Module, x: np.ndarray, ref: np.ndarray, precision: str, batch_size: int = 64, max_samples: int = 128
) -> dict[str, float] | None:
    """The reference framework's own error in `precision`, which the judged tolerance is relative to
    (nfdeploy.precision.judged_tolerance): {"rel_l2", "top1_agreement"} of `model` (the unfolded torch model)
    run on CPU in the precision's dtype against `ref` (float64), on the first `max_samples` inputs (fp16/bf16
    convolutions are slow on CPU: a large model on all parity inputs would cost minutes). None where the rule
    has nothing to scale: fp64 (the reference itself), tf32 (torch cannot run it on CPU), int8 (no rel L2 rule)."""
    p = get_precision(precision)
    if precision in ("fp64", "tf32") or p.rel_l2 is None:
        return None
    x, ref = x[:max_samples], ref[:max_samples]
    m = copy.deepcopy(model).to(dtype=p.torch_dtype).eval()
    out = torch.cat(
        [m(torch.from_numpy(x[i : i + batch_size]).to(p.torch_dtype)).double() for i in range(0, len(x), batch_size)]
    )
    return {"rel_l2": compare_outputs(ref, out)["rel_l2"], "top1_agreement": top1_agreement(out, ref)}


def framework_error(
    model: torch.nn.Module, x: np.ndarray, ref: np.ndarray, precision: str, batch_size: int = 64, max_samples: int = 128
) -> float | None:
    """framework_errors' rel L2 alone (None where it has none)."""
    e = framework_errors(model, x, ref, precision, batch_size, max_samples)
    return None if e is None else e["rel_l2"]


def judge(
    out: Any, ref: Any, precision: str, labels: Any = None, tolerance: dict[str, float] | None = None
) -> dict[str, Any]:
    """Errors, top-1 agreement and (with labels) accuracy of `out` against `ref`, with
    status "pass" or "FAIL" by the tolerance of `precision` in the precision table."""
    o, r = _to_double(out), _to_double(ref)
    tol = tolerance or get_precision(precision).tolerance()
    nonfinite = int((~torch.isfinite(o)).sum())
    row: dict[str, Any] = {**compare_outputs(r, o), "top1_agreement": top1_agreement(o, r)}
    if labels is not None:
        lab = torch.as_tensor(np.asarray(labels))
        row["accuracy"] = float((o.argmax(1) == lab).double().mean())
        row["reference_accuracy"] = float((r.argmax(1) == lab).double().mean())
        row["accuracy_delta"] = row["accuracy"] - row["reference_accuracy"]
    reasons = []
    if nonfinite:
        reasons.append(f"{nonfinite} non-finite output values")
    if "rel_l2" in tol and not row["rel_l2"] <= tol["rel_l2"]:
        reasons.append(f"rel L2 {row['rel_l2']:.3g} > {tol['rel_l2']:g}")
    if not row["top1_agreement"] >= tol["top1_agreement"]:
        reasons.append(f"top-1 agreement {row['top1_agreement']:.2%} < {tol['top1_agreement']:.1%}")
    if "max_accuracy_drop" in tol:
        if labels is None:  # the rule needs labelled data: say so rather than pass silently
            row["accuracy_drop"] = None
            row["note"] = "accuracy drop not judged: no labels"
        else:
            row["accuracy_drop"] = row["reference_accuracy"] - row["accuracy"]
            if not row["accuracy_drop"] <= tol["max_accuracy_drop"] + 1e-12:  # equality within float rounding passes
                reasons.append(f"accuracy drop {row['accuracy_drop']:.2%} > {tol['max_accuracy_drop']:.1%}")
    row.update(nonfinite=nonfinite, tolerance=dict(tol), status="FAIL" if reasons else "pass")
    if reasons:
        row["reason"] = "; ".join(reasons)
    return row


__all__ = ["compare_outputs", "framework_error", "framework_errors", "judge", "sqnr_db", "top1_agreement", "ulp_error"]
