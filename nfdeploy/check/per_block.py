"""Error per block: where inside the model a backend departs from the reference.

Every backend against the float64 model of its own variant at the points of nfdeploy.check.model_points
(stem, every block of the residual stream, the pre-logits features), in the model's own module names.
Torch backends: forward hooks. ONNX Runtime: a copy of the graph with those values added as graph
outputs (nfdeploy.export.onnx_graph.block_values / run_with_values), run instead of the backend's own
session, never beside it. The first diverging point is the first whose relative L2 error passes the
backend's tolerance, with the ops inside it; when every point is within it and the logits are not, the
divergence lies after FEATURES, in the head (the classifier), and the row says so (HEAD).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from nfdeploy.check.model_points import (
    FEATURES,
    BlockStructureError,
    block_points,
    capture_points,
    classifier_path,
    module_ops,
)
from nfdeploy.errors import require
from nfdeploy.export.onnx_graph import block_values, run_with_values
from nfdeploy.metrics import compare_outputs, ulp_error
from nfdeploy.precision import get_precision
from nfdeploy.render import markdown_table, pyplot, save_figure
from nfdeploy.runtime.base import Backend, BackendUnavailable
from nfdeploy.runtime.ort import OrtBackend
from nfdeploy.runtime.torch_backend import TorchBackend
from nfdeploy.status import Status

TENSORRT_REASON = (
    "per-block outputs on TensorRT need an engine rebuilt with those tensors marked as outputs, "
    "which changes layer fusion and so what is measured; not done"
)
# The point after FEATURES: the logits, computed by the head (the classifier) from the features.
HEAD = "logits"


def _concat(parts: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate(v) for k, v in parts.items()}


def torch_points(
    backend: TorchBackend, x: np.ndarray, batch_size: int = 64
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """({point: float64 array}, float64 logits) of an active torch backend, through forward hooks on its module
    (the logits as the backend computed them: a float64 reference stays float64)."""
    if backend.spec.mode not in ("", "eager"):
        raise BackendUnavailable(f"per-block capture needs eager torch (hooks do not run inside {backend.spec.mode})")
    logits = []
    with capture_points(backend.module) as got:
        for i in range(0, len(x), batch_size):
            out = backend.run_tensor(torch.from_numpy(backend.check_input(x[i : i + batch_size])))
            logits.append(out.to("cpu", torch.float64).numpy())
    return _concat(got), np.concatenate(logits)


def onnx_points(
    backend: OrtBackend, x: np.ndarray, points: Sequence[str], batch_size: int = 64
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """({point: float64 array}, logits) from an instrumented copy of an inactive backend's graph, run with
    the backend's own settings (device, precision, threads). The copy's session takes the place of the
    backend's: holding both would put two sessions of one graph on the device."""
    if backend.active:
        raise RuntimeError(
            f"{backend.name} is active: per-block capture runs its own session of the graph, "
            "deactivate the backend first (one session on the device at a time)"
        )
    onnx = require("onnx", "onnx")
    values = block_values(onnx.load(str(backend.path)), points)
    got, logits = run_with_values(
        backend.path, [v["value"] for v in values.values()], x, backend.spec, backend.threads, batch_size
    )
    return dict(zip(values, got)), logits


def point_errors(out: np.ndarray, ref: np.ndarray, precision: str) -> dict[str, float]:
    """rel L2, max abs, SQNR (dB), the worst element's distance in ULPs of `precision` at its own reference
    value (max_ulp: dominated by elements near zero, e.g. just above a ReLU's kink) and max abs in ULPs at
    the tensor's largest reference magnitude (max_ulp_at_max: the error on the tensor's own scale)."""
    dtype = get_precision(precision).torch_dtype
    c = compare_outputs(ref, out)
    ulps = ulp_error(out, ref, dtype)
    peak = float(np.abs(ref).max())
    at_max = float(ulp_error(np.float64(peak + c["max_abs"]), np.float64(peak), dtype))
    return {
        "rel_l2": c["rel_l2"],
        "max_abs": c["max_abs"],
        "sqnr_db": c["sqnr_db"],
        "max_ulp": float(ulps.max()) if np.isfinite(ulps).all() else float("inf"),
        "max_ulp_at_max": at_max,
    }


def first_diverging(points: list[dict[str, Any]], tol_rel_l2: float) -> dict[str, Any] | None:
    """The first point whose rel L2 passes `tol_rel_l2` (a non-finite error passes any tolerance)."""
    for p in points:
        if not p["rel_l2"] <= tol_rel_l2:
            return p
    return None


@dataclass
class ReferencePoints:
    """The float64 references of a per-block run: the point names, and per variant ("unfolded": the unfolded
    model, "folded": the folded one) the value at every point and the logits."""

    names: list[str]
    points: dict[str, dict[str, np.ndarray]]
    logits: dict[str, np.ndarray]


def reference_points(source: Any, x: np.ndarray, ref_backend: Backend) -> ReferencePoints:
    """The two float64 references at every point and at the logits: "unfolded" (`ref_backend`, the unfolded
    model in float64, hooked) and "folded" (the folded model in float64, hooked)."""
    names = [p for p, _ in block_points(source.folded(torch.float32))]
    with ref_backend:
        unfolded, unfolded_logits = torch_points(ref_backend, x)
    if list(unfolded) != names:
        raise BlockStructureError(
            f"the reference model's points {list(unfolded)} differ from the folded model's {names}"
        )
    folded64 = source.folded(torch.float64)
    logits = []
    with torch.no_grad(), capture_points(folded64) as got:
        for i in range(0, len(x), 64):
            logits.append(folded64(torch.from_numpy(x[i : i + 64]).double()).numpy())
    return ReferencePoints(
        names,
        {"unfolded": unfolded, "folded": _concat(got)},
        {"unfolded": unfolded_logits, "folded": np.concatenate(logits)},
    )


def capture_backend(b: Backend, x: np.ndarray, names: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray, str]:
    """({point: float64 array}, logits, how it was instrumented) of one backend; BackendUnavailable when
    it cannot be captured here. Torch: the backend itself, active, hooked; ONNX Runtime: an instrumented
    copy of its graph in place of its own session."""
    reason = b.unavailable_reason()
    if reason is None and not isinstance(b, (TorchBackend, OrtBackend)):
        reason = TENSORRT_REASON
    if reason:
        raise BackendUnavailable(reason)
    if isinstance(b, OrtBackend):
        got, out = onnx_points(b, x, names)
        return got, out, "graph outputs added to a copy of the ONNX"
    with b:
        got, out = torch_points(b, x)
    return got, out, "forward hooks (eager torch computes the same with or without them)"


def diverging_point(
    b: Backend, pts: list[dict[str, Any]], logits: dict[str, float], tol: float, folded: torch.nn.Module
) -> dict[str, Any] | None:
    """Where the backend departs from its reference: the first point past `tol`, or HEAD when every point is
    within it and the logits are not (the divergence lies after FEATURES, in the classifier); with the ops
    inside it, in torch terms and (ONNX backends) in the graph's."""
    div = first_diverging(pts, tol)
    if div is None and not logits["rel_l2"] <= tol:
        div = {"point": HEAD, "depth": len(pts), "rel_l2": logits["rel_l2"]}
    if div is None:
        return None
    point = div["point"]
    found = {
        "point": point,
        "depth": div["depth"],
        "rel_l2": div["rel_l2"],
        "torch_ops": module_ops(folded, classifier_path(folded) if point in (FEATURES, HEAD) else point),
    }
    if isinstance(b, OrtBackend):
        onnx = require("onnx", "onnx")
        where = FEATURES if point == HEAD else point  # the classifier's scope holds the head's ops
        found["onnx_ops"] = block_values(onnx.load(str(b.path)), [where])[where]["ops"]
    return found


def divergence_conclusion(div: dict[str, Any] | None, tol: float) -> str:
    """The per-block verdict in one sentence: where the backend diverges, or that it does not."""
    if div is None:
        if not math.isfinite(tol):
            return "no rel L2 tolerance for this precision: no point is judged to diverge"
        return f"within rel L2 {tol:.3g} at every point and at the logits"
    if div["point"] == HEAD:
        return (
            f"diverges after `{FEATURES}`: in the head (classifier) — every point is within rel L2 {tol:.3g}, "
            f"the logits are not (rel L2 {div['rel_l2']:.3g})"
        )
    return f"diverges at `{div['point']}` (depth {div['depth']}): the first point past rel L2 {tol:.3g}"


def backend_row(
    b: Backend,
    got: dict[str, np.ndarray],
    out: np.ndarray,
    how: str,
    ref: dict[str, np.ndarray],
    ref_logits: np.ndarray,
    tol: float,
    folded: torch.nn.Module,
    plain_logits: np.ndarray | None,
) -> dict[str, Any]:
    """One backend's row: errors at every point and at the logits, where it first diverges and the ops there,
    the conclusion in words, and (ONNX) whether instrumenting changed the logits."""
    pts = [{"point": p, "depth": i, **point_errors(got[p], ref[p], b.precision)} for i, p in enumerate(ref)]
    row: dict[str, Any] = {
        "status": Status.DONE.value,
        "precision": b.precision,
        "tolerance_rel_l2": tol,
        "points": pts,
        "instrumentation": how,
    }
    if isinstance(b, OrtBackend) and plain_logits is not None:
        # Extra graph outputs can stop ORT from fusing across them (e.g. Conv+Add): the logits of the
        # instrumented graph are checked against the plain graph's so a changed computation shows.
        row["instrumented_logits_bitwise_equal"] = bool(np.array_equal(out, plain_logits))
        row["instrumented_logits_max_abs_change"] = float(np.abs(out.astype(np.float64) - plain_logits).max())
    row["logits"] = point_errors(out, ref_logits, b.precision)
    div = diverging_point(b, pts, row["logits"], tol, folded)
    if div is not None:
        row["first_diverging"] = div
    row["conclusion"] = divergence_conclusion(div, tol)
    return row


def per_block_report(
    source: Any,
    x: np.ndarray,
    backends: Sequence[Backend],
    ref_backend: Backend,
    tolerances: dict[str, dict[str, Any]],
    logits: dict[str, np.ndarray] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Error per point for every backend (one session on the device at a time) against the float64 model
    of its own variant: unfolded torch backends against `ref_backend` (the float64 unfolded model, hooked),
    folded ones (folded torch, ONNX) against the folded model in float64. The two references agree at every
    block to rounding (reported as "folded_vs_unfolded_fp64"); the pre-logits features differ by the final
    activation's gain, which the fold moves into the classifier's weights.
    `tolerances`: {backend name: the tolerance it is judged by at the logits}.
    `logits`: each backend's plain logits, to check that instrumenting did not change what it computes."""
    refs = reference_points(source, x, ref_backend)
    names = refs.names
    unfolded, folded64 = refs.points["unfolded"], refs.points["folded"]
    agreement = {p: compare_outputs(unfolded[p], folded64[p])["rel_l2"] for p in names if p != FEATURES}
    folded = source.folded(torch.float32)
    rows: dict[str, Any] = {}
    for b in backends:
        try:
            got, out, how = capture_backend(b, x, names)
        except BackendUnavailable as e:
            rows[b.name] = {"status": Status.SKIPPED.value, "reason": str(e)}
            continue
        tol = tolerances[b.name].get("rel_l2", math.inf)  # int8 has no rel L2 rule: nothing "diverges" by it
        variant = "unfolded" if getattr(b.spec, "variant", "") == "unfolded" else "folded"
        row = rows[b.name] = backend_row(
            b, got, out, how, refs.points[variant], refs.logits[variant], tol, folded, (logits or {}).get(b.name)
        )
        worst = max(row["points"], key=lambda p: p["rel_l2"] if math.isfinite(p["rel_l2"]) else math.inf)
        log(
            f"  per-block {b.name}: worst {worst['point']} rel L2 {worst['rel_l2']:.2e}"
            + (f"; first past {tol:g}: {row['first_diverging']['point']}" if "first_diverging" in row else "")
        )
    return {"points": names, "reference": ref_backend.name, "folded_vs_unfolded_fp64": agreement, "backends": rows}


def plot_per_block(per_block: dict[str, Any], path: Any, title: str = "") -> None:
    """Relative L2 error against depth, one line per backend, its tolerance dashed in the same colour."""
    plt = pyplot()
    names = per_block["points"]
    fig, ax = plt.subplots(figsize=(max(7, 0.25 * len(names) + 3), 4.5))
    seen_tol: dict[float, Any] = {}
    for i, (bname, row) in enumerate(
        (k, v) for k, v in per_block["backends"].items() if v.get("status") == Status.DONE
    ):
        color = f"C{i % 10}"
        ys = [max(p["rel_l2"], 1e-18) if math.isfinite(p["rel_l2"]) else 1.0 for p in row["points"]]
        ax.plot(range(len(ys)), ys, marker="o", ms=3, color=color, label=bname)
        tol = row["tolerance_rel_l2"]
        if tol not in seen_tol:
            seen_tol[tol] = ax.axhline(tol, color=color, ls="--", lw=1)
    step = max(1, len(names) // 30)
    ax.set_xticks(range(0, len(names), step), names[::step], rotation=60, ha="right", fontsize=7)
    ax.set_yscale("log"), ax.set_ylabel("relative L2 vs float64 reference"), ax.grid(alpha=0.3)
    ax.set_title(title or "error per block (dashed: tolerance at the logits)")
    ax.legend(fontsize=7)
    save_figure(fig, path)


def per_block_markdown(per_block: dict[str, Any]) -> str:
    worst = max(per_block["folded_vs_unfolded_fp64"].values(), default=0.0)
    lines = [
        f"Reference: the float64 model of the backend's variant with forward hooks — {per_block['reference']} for "
        "unfolded torch backends, the folded model in float64 for folded torch and ONNX backends (the two agree at "
        f"every block to rel L2 {worst:.2g}; the folded `{FEATURES}` are the unfolded ones divided by the final "
        "activation's gain, which the fold moves into the classifier). Points: stem, every residual block, "
        f"`{FEATURES}` = the classifier's input. ULPs are of the backend's precision at the reference value.\n"
    ]
    for name, row in per_block["backends"].items():
        if row.get("status") != Status.DONE:
            lines.append(f"### {name}\nskipped: {row.get('reason')}\n")
            continue
        div = row.get("first_diverging")
        head = (
            f"### {name}\nTolerance (rel L2): {row['tolerance_rel_l2']:.3g}. Instrumentation: {row['instrumentation']}"
        )
        if "instrumented_logits_bitwise_equal" in row:
            head += (
                f"; instrumented logits bitwise equal to the plain graph's: {row['instrumented_logits_bitwise_equal']} "
                f"(max change {row['instrumented_logits_max_abs_change']:.3g})"
            )
        head += ".\n"
        if div:
            ops = ", ".join(f"{k} ×{v}" for k, v in sorted((div.get("onnx_ops") or div["torch_ops"]).items()))
            if div["point"] == HEAD:
                head += (
                    f"\n**Diverges after `{FEATURES}`: in the head (classifier)** — every point is within tolerance, "
                    f"the logits are not (rel L2 {div['rel_l2']:.3g}); ops in the head: {ops}.\n"
                )
            else:
                head += (
                    f"\n**First diverging point: `{div['point']}`** (depth {div['depth']}, "
                    f"rel L2 {div['rel_l2']:.3g}); ops: {ops}.\n"
                )
        lines += [
            head,
            markdown_table(
                row["points"], ["point", "rel_l2", "max_abs", "sqnr_db", "max_ulp", "max_ulp_at_max"], floatfmt="{:.3g}"
            ),
        ]
    return "\n".join(lines)


__all__ = [
    "HEAD",
    "TENSORRT_REASON",
    "ReferencePoints",
    "backend_row",
    "capture_backend",
    "divergence_conclusion",
    "diverging_point",
    "first_diverging",
    "onnx_points",
    "per_block_markdown",
    "per_block_report",
    "plot_per_block",
    "point_errors",
    "reference_points",
    "torch_points",
]
