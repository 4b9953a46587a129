"""Parity forensics: where inside the model a backend departs from the reference, and whether its
outputs depend on the batch, the machine or the thread count.

- Error per block: every backend against the float64 reference at the stem output, at each block output
  of the residual stream and at the pre-logits features (the input of the classifier), in the model's own
  module names ("stem", "blocks.3" / timm's "stages.2.1", "features"). Torch backends: forward hooks.
  ONNX Runtime: a copy of the graph with those values added as graph outputs, found through the
  exporter's per-node "pkg.torch.onnx.name_scopes" metadata (the folded model's module paths).
- First diverging block: the first point whose relative L2 error passes the backend's tolerance, with
  the ops inside it.
- Batch-invariance matrix: each sample at batch sizes MATRIX_BATCHES against its batch-1 output.
- Saved outputs (outputs.npz + provenance.json) and `compare_saved_runs(A, B)` across machines.
- The reference framework's own error per dtype (the unfolded torch model on CPU), which the judged
  tolerance is relative to (nfdeploy.precision.judged_tolerance).
"""

from __future__ import annotations

import ast
import copy
import io
import itertools
import json
import math
import tempfile
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from nfdeploy.artifacts import array_sha256, atomic_write_bytes, atomic_write_json, atomic_write_text, read_json
from nfdeploy.backends import bn_twin, twin_runner
from nfdeploy.errors import UserError, require
from nfdeploy.metrics import compare_outputs, top1_agreement, ulp_error
from nfdeploy.precision import get_precision
from nfdeploy.reports import markdown_table, pyplot, save_figure
from nfdeploy.runtime.base import Backend, BackendUnavailable
from nfdeploy.runtime.ort import OrtBackend
from nfdeploy.runtime.torch_backend import TorchBackend

MATRIX_BATCHES = (1, 2, 3, 7, 8, 16, 32, 64)
FEATURES = "features"  # the pre-logits point: the input of the classifier
OUTPUTS_FILE = "outputs.npz"
PROVENANCE_FILE = "provenance.json"
SCOPES_KEY = "pkg.torch.onnx.name_scopes"  # written by torch.onnx's dynamo exporter on every node


class ForensicsError(UserError, RuntimeError):
    """A model or graph whose block structure cannot be read, or saved runs that cannot be compared; one line."""


# ------------------------------------------------------------------------------------------------
# The points of a model: stem, every block of the residual stream, the pre-logits features


def block_points(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """[(point name, module)] in forward order: "stem", each residual block under its module path, and
    FEATURES (taken as the classifier's input). Works for NFResNet / FoldedNet ("blocks.i") and timm's
    NormFreeNet / FoldedTimmNet ("stages.i.j"): the unfolded and the folded model give the same names."""
    if not isinstance(getattr(model, "stem", None), nn.Module):
        raise ForensicsError(f"{type(model).__name__} has no `stem`: per-block forensics reads NF-ResNet and "
                             "timm NormFreeNet models")
    points: list[tuple[str, nn.Module]] = [("stem", model.stem)]
    if isinstance(getattr(model, "blocks", None), nn.Sequential):
        points += [(f"blocks.{i}", b) for i, b in enumerate(model.blocks)]
    elif isinstance(getattr(model, "stages", None), nn.Sequential):
        points += [(f"stages.{i}.{j}", b) for i, s in enumerate(model.stages) for j, b in enumerate(s)]
    else:
        raise ForensicsError(f"{type(model).__name__} has neither `blocks` nor `stages`")
    fc = getattr(model, "fc", None)
    if fc is None and hasattr(model, "head"):
        fc = getattr(model.head, "fc", None)
    if not isinstance(fc, nn.Module):
        raise ForensicsError(f"{type(model).__name__} has no classifier `fc` / `head.fc`")
    points.append((FEATURES, fc))
    return points


def classifier_path(model: nn.Module) -> str:
    return "fc" if isinstance(getattr(model, "fc", None), nn.Module) else "head.fc"


@contextmanager
def capture_points(model: nn.Module) -> Iterator[dict[str, list[np.ndarray]]]:
    """Forward hooks on every point: each call appends a float64 copy (block outputs, the classifier's
    input for FEATURES). The copy is taken as the module returns, before a later in-place op can touch it.
    Hooks do not change what eager torch computes."""
    got: dict[str, list[np.ndarray]] = {}
    handles = []
    for name, module in block_points(model):
        got[name] = []

        def keep(t: torch.Tensor, name: str = name) -> None:
            got[name].append(t.detach().to("cpu", torch.float64).numpy().copy())

        if name == FEATURES:
            handles.append(module.register_forward_pre_hook(lambda m, args, keep=keep: keep(args[0])))
        else:
            handles.append(module.register_forward_hook(lambda m, args, out, keep=keep: keep(out)))
    try:
        yield got
    finally:
        for h in handles:
            h.remove()


# ------------------------------------------------------------------------------------------------
# ONNX: the points as graph values


def _scopes(node: Any) -> list[str]:
    for p in node.metadata_props:
        if p.key == SCOPES_KEY:
            # A Python list literal, e.g. "['', 'blocks', 'blocks.0', 'add_45']" (torch 2.9+).
            return list(ast.literal_eval(p.value)) if p.value.startswith("[") else [p.value]
    return []


def onnx_point_values(model: Any, points: Sequence[str], classifier: str = "fc") -> dict[str, dict[str, Any]]:
    """{point: {"value": ONNX value name, "ops": {op_type: count}}} for an exported folded model.

    A block's output is the one value produced inside its module scope and read outside it (or a graph
    output); FEATURES is the one non-constant input of the classifier's scope. Fewer or more than one
    candidate is an error rather than a guess."""
    consts = {i.name for i in model.graph.initializer}
    nodes = [(n, set(_scopes(n))) for n in model.graph.node]
    if not any(s for _, s in nodes):
        raise ForensicsError(f"the ONNX graph has no {SCOPES_KEY!r} node metadata (not exported by torch.onnx's "
                             "dynamo exporter?): its blocks cannot be located")
    outputs = {o.name for o in model.graph.output}
    # A reduced-precision graph with float32 I/O wraps the folded net as "net" (IOCast): scopes "net.stem", ...
    prefix = next((sc[:-4] for _, s in nodes for sc in s if sc == "stem" or sc.endswith(".stem")), "")
    out: dict[str, dict[str, Any]] = {}
    for point in points:
        scope = prefix + (classifier if point == FEATURES else point)
        inside = [n for n, s in nodes if scope in s]
        if not inside:
            raise ForensicsError(f"no ONNX node belongs to {scope!r}")
        produced = {v for n in inside for v in n.output}
        if point == FEATURES:
            cands = sorted({v for n in inside for v in n.input if v and v not in produced and v not in consts})
        else:
            read_outside = {v for n, s in nodes if scope not in s for v in n.input}
            cands = sorted(v for v in produced if v in read_outside or v in outputs)
        if len(cands) != 1:
            raise ForensicsError(f"{point}: expected one value leaving {scope!r} in the ONNX graph, found {cands}")
        out[point] = {"value": cands[0], "ops": dict(Counter(n.op_type for n in inside))}
    return out


def instrument_onnx(src: str | Path, dst: str | Path, points: Sequence[str], classifier: str = "fc") -> dict[str, str]:
    """Write a copy of `src` with every point's value added as a graph output; {point: output name}."""
    onnx = require("onnx", "onnx")
    model = onnx.load(str(src))
    mapping = onnx_point_values(model, points, classifier)
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in list(inferred.graph.value_info) + list(inferred.graph.output)
             + list(inferred.graph.input)}
    have = {o.name for o in model.graph.output}
    for p, m in mapping.items():
        v = m["value"]
        if v not in have:
            if v not in types:
                raise ForensicsError(f"{p}: the element type of ONNX value {v!r} cannot be inferred")
            model.graph.output.append(onnx.helper.make_tensor_value_info(v, types[v], None))
            have.add(v)
    onnx.save(model, str(dst))
    return {p: m["value"] for p, m in mapping.items()}


def plant_conv_defect(src: str | Path, dst: str | Path, point: str, factor: float) -> str:
    """Write a copy of `src` with the weights of the first Conv inside `point` (graph order: a transition
    block's shortcut conv, else the branch's first conv) multiplied by `factor` (a planted defect, to check
    that forensics localises it); returns the initializer's name. The shortcut carries the block's input at
    full weight, while a branch conv is damped by the block's skip gain (small in a briefly trained model)."""
    onnx = require("onnx", "onnx")
    from onnx import numpy_helper

    model = onnx.load(str(src))
    scope = onnx_point_values(model, [point])[point]
    inits = {i.name: i for i in model.graph.initializer}
    prefix = next((sc[:-4] for n in model.graph.node for sc in _scopes(n) if sc == "stem" or sc.endswith(".stem")), "")
    convs = [n for n in model.graph.node if n.op_type == "Conv" and prefix + point in _scopes(n) and n.input[1] in inits]
    if not convs or not scope:
        raise ForensicsError(f"no Conv with an initializer weight inside {point!r}")
    init = inits[convs[0].input[1]]
    w = numpy_helper.to_array(init)
    init.CopyFrom(numpy_helper.from_array((w * np.asarray(factor, dtype=w.dtype)).astype(w.dtype), init.name))
    onnx.save(model, str(dst))
    return init.name


# ------------------------------------------------------------------------------------------------
# Capturing a backend's points


def _concat(parts: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate(v) for k, v in parts.items()}


def torch_points(backend: TorchBackend, x: np.ndarray, batch_size: int = 64) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """({point: float64 array}, logits) of an active torch backend, through forward hooks on its module."""
    if backend.spec.mode not in ("", "eager"):
        raise BackendUnavailable(f"per-block capture needs eager torch (hooks do not run inside {backend.spec.mode})")
    logits = []
    with capture_points(backend.module) as got:
        for i in range(0, len(x), batch_size):
            logits.append(backend.run(x[i:i + batch_size]))
    return _concat(got), np.concatenate(logits)


def onnx_points(backend: OrtBackend, x: np.ndarray, points: Sequence[str], classifier: str = "fc",
                batch_size: int = 64) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """({point: float64 array}, logits) from an instrumented copy of the backend's graph, run with the
    backend's own settings (device, precision, threads)."""
    with tempfile.TemporaryDirectory() as td:
        path = Path(td) / backend.path.name
        names = instrument_onnx(backend.path, path, points, classifier)
        twin = OrtBackend(backend.spec, backend.input_shape, path, threads=backend.threads)
        got: dict[str, list[np.ndarray]] = {p: [] for p in names}
        logits = []
        with twin:
            outs = [o.name for o in twin.session.get_outputs()]
            for i in range(0, len(x), batch_size):
                vals = dict(zip(outs, twin.session.run(None, {twin.input_name: np.ascontiguousarray(x[i:i + batch_size])})))
                logits.append(np.asarray(vals[twin.output_name], dtype=np.float32))
                for p, v in names.items():
                    got[p].append(np.asarray(vals[v]).astype(np.float64))
    return _concat(got), np.concatenate(logits)


def point_errors(out: np.ndarray, ref: np.ndarray, precision: str) -> dict[str, float]:
    """rel L2, max abs, SQNR (dB), the worst element's distance in ULPs of `precision` at its own reference
    value (max_ulp: dominated by elements near zero, e.g. just above a ReLU's kink) and max abs in ULPs at
    the tensor's largest reference magnitude (max_ulp_at_max: the error on the tensor's own scale)."""
    dtype = get_precision(precision).torch_dtype
    c = compare_outputs(ref, out)
    ulps = ulp_error(out, ref, dtype)
    peak = float(np.abs(ref).max())
    at_max = float(ulp_error(np.float64(peak + c["max_abs"]), np.float64(peak), dtype))
    return {"rel_l2": c["rel_l2"], "max_abs": c["max_abs"], "sqnr_db": c["sqnr_db"],
            "max_ulp": float(ulps.max()) if np.isfinite(ulps).all() else float("inf"), "max_ulp_at_max": at_max}


def first_diverging(points: list[dict[str, Any]], tol_rel_l2: float) -> dict[str, Any] | None:
    """The first point whose rel L2 passes `tol_rel_l2` (a non-finite error passes any tolerance)."""
    for p in points:
        if not p["rel_l2"] <= tol_rel_l2:
            return p
    return None


def module_ops(model: nn.Module, path: str) -> dict[str, int]:
    """Leaf module types under `path` of a torch model (the ops of a block in torch terms)."""
    sub = model.get_submodule(path)
    leaves = [m for m in sub.modules() if not list(m.children())] or [sub]
    return dict(Counter(type(m).__name__ for m in leaves))


def per_block_report(source: Any, x: np.ndarray, backends: Sequence[Backend], ref_backend: Backend,
                     tolerances: dict[str, dict[str, Any]], logits: dict[str, np.ndarray] | None = None,
                     log: Callable[[str], None] = print) -> dict[str, Any]:
    """Error per point for every backend (one active at a time) against the float64 model of its own
    variant: unfolded torch backends against `ref_backend` (the float64 unfolded model, hooked), folded
    ones (folded torch, ONNX) against the folded model in float64. The two references agree at every
    block to rounding (reported as "folded_vs_unfolded_fp64"); the pre-logits features differ by the final
    activation's gain, which the fold moves into the classifier's weights.
    `tolerances`: {backend name: the tolerance it is judged by at the logits}.
    `logits`: each backend's plain logits, to check that instrumenting did not change what it computes."""
    folded = source.folded(torch.float32)
    names = [p for p, _ in block_points(folded)]
    classifier = classifier_path(folded)
    with ref_backend:
        ref_unfolded, _ = torch_points(ref_backend, x)
    if list(ref_unfolded) != names:
        raise ForensicsError(f"the reference model's points {list(ref_unfolded)} differ from the folded model's {names}")
    with torch.no_grad(), capture_points(source.folded(torch.float64)) as got64:
        for i in range(0, len(x), 64):
            source.folded(torch.float64)(torch.from_numpy(x[i:i + 64]).double())
    ref_folded = _concat(got64)
    agreement = {p: compare_outputs(ref_unfolded[p], ref_folded[p])["rel_l2"] for p in names if p != FEATURES}
    rows: dict[str, Any] = {}
    for b in backends:
        reason = b.unavailable_reason()
        if reason is None and not isinstance(b, (TorchBackend, OrtBackend)):
            reason = ("per-block outputs on TensorRT need an engine rebuilt with those tensors marked as outputs, "
                      "which changes layer fusion and so what is measured; not done")
        if reason:
            rows[b.name] = {"status": "skipped", "reason": reason}
            continue
        try:
            with b:
                if isinstance(b, TorchBackend):
                    got, out = torch_points(b, x)
                else:
                    got, out = onnx_points(b, x, names, classifier)
        except BackendUnavailable as e:
            rows[b.name] = {"status": "skipped", "reason": str(e)}
            continue
        tol = tolerances[b.name].get("rel_l2", math.inf)  # int8 has no rel L2 rule: nothing "diverges" by it
        ref = ref_unfolded if getattr(b.spec, "variant", "") == "unfolded" else ref_folded
        pts = [{"point": p, "depth": i, **point_errors(got[p], ref[p], b.precision)} for i, p in enumerate(names)]
        row: dict[str, Any] = {"status": "ok", "precision": b.precision, "tolerance_rel_l2": tol, "points": pts}
        if isinstance(b, OrtBackend):
            # Extra graph outputs can stop ORT from fusing across them (e.g. Conv+Add): the logits of the
            # instrumented graph are checked against the plain graph's so a changed computation shows.
            row["instrumentation"] = "graph outputs added to a copy of the ONNX"
            if logits is not None and b.name in logits:
                row["instrumented_logits_bitwise_equal"] = bool(np.array_equal(out, logits[b.name]))
                row["instrumented_logits_max_abs_change"] = float(np.abs(out.astype(np.float64) - logits[b.name]).max())
        else:
            row["instrumentation"] = "forward hooks (eager torch computes the same with or without them)"
        div = first_diverging(pts, tol)
        if div is not None:
            where = FEATURES if div["point"] == FEATURES else div["point"]
            row["first_diverging"] = {"point": where, "depth": div["depth"], "rel_l2": div["rel_l2"],
                                      "torch_ops": module_ops(folded, classifier if where == FEATURES else where)}
            if isinstance(b, OrtBackend):
                onnx = require("onnx", "onnx")
                row["first_diverging"]["onnx_ops"] = onnx_point_values(onnx.load(str(b.path)), [where], classifier)[where]["ops"]
        rows[b.name] = row
        worst = max(pts, key=lambda p: p["rel_l2"] if math.isfinite(p["rel_l2"]) else math.inf)
        log(f"  per-block {b.name}: worst {worst['point']} rel L2 {worst['rel_l2']:.2e}"
            + (f"; first past {tol:g}: {row['first_diverging']['point']}" if div else ""))
    return {"points": names, "reference": ref_backend.name, "folded_vs_unfolded_fp64": agreement, "backends": rows}


def plot_per_block(per_block: dict[str, Any], path: Path, title: str = "") -> None:
    """Relative L2 error against depth, one line per backend, its tolerance dashed in the same colour."""
    plt = pyplot()
    names = per_block["points"]
    fig, ax = plt.subplots(figsize=(max(7, 0.25 * len(names) + 3), 4.5))
    seen_tol: dict[float, Any] = {}
    for i, (bname, row) in enumerate((k, v) for k, v in per_block["backends"].items() if v.get("status") == "ok"):
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
    lines = [f"Reference: the float64 model of the backend's variant with forward hooks — {per_block['reference']} for "
             "unfolded torch backends, the folded model in float64 for folded torch and ONNX backends (the two agree at "
             f"every block to rel L2 {worst:.2g}; the folded `{FEATURES}` are the unfolded ones divided by the final "
             "activation's gain, which the fold moves into the classifier). Points: stem, every residual block, "
             f"`{FEATURES}` = the classifier's input. ULPs are of the backend's precision at the reference value.\n"]
    for name, row in per_block["backends"].items():
        if row.get("status") != "ok":
            lines.append(f"### {name}\nskipped: {row.get('reason')}\n")
            continue
        div = row.get("first_diverging")
        head = f"### {name}\nTolerance (rel L2): {row['tolerance_rel_l2']:.3g}. Instrumentation: {row['instrumentation']}"
        if "instrumented_logits_bitwise_equal" in row:
            head += (f"; instrumented logits bitwise equal to the plain graph's: {row['instrumented_logits_bitwise_equal']} "
                     f"(max change {row['instrumented_logits_max_abs_change']:.3g})")
        head += ".\n"
        if div:
            ops = div.get("onnx_ops") or div["torch_ops"]
            head += (f"\n**First diverging point: `{div['point']}`** (depth {div['depth']}, rel L2 {div['rel_l2']:.3g}); "
                     f"ops: {', '.join(f'{k} ×{v}' for k, v in sorted(ops.items()))}.\n")
        lines += [head, markdown_table(row["points"], ["point", "rel_l2", "max_abs", "sqnr_db", "max_ulp", "max_ulp_at_max"],
                                       floatfmt="{:.3g}")]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Batch-invariance matrix


def batch_invariance_matrix(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, dtype: torch.dtype,
                            batches: Sequence[int] = MATRIX_BATCHES) -> dict[str, dict[str, float]]:
    """Each sample of `x` inside batches of every size in `batches` (full batches: samples wrap around,
    so no batch is a smaller leftover) against its own batch-1 output: share of samples bitwise
    identical, max ULP distance (in `dtype` at the batch-1 value), max relative L2 per sample."""
    n = len(x)
    alone = np.concatenate([run(x[i:i + 1]) for i in range(n)]).astype(np.float64)
    out: dict[str, dict[str, float]] = {}
    for bs in batches:
        idx = np.arange(math.ceil(n / bs) * bs) % n
        got = np.concatenate([run(np.ascontiguousarray(x[idx[i:i + bs]])) for i in range(0, len(idx), bs)])[:n]
        got = got.astype(np.float64)
        same = np.all(got == alone, axis=1)
        rel = np.linalg.norm(got - alone, axis=1) / np.maximum(np.linalg.norm(alone, axis=1), 1e-300)
        out[str(bs)] = {"bitwise_share": float(same.mean()), "max_ulp": float(ulp_error(got, alone, dtype).max()),
                        "max_rel_l2": float(rel.max())}
    return out


def matrix_rows(matrix: dict[str, dict[str, dict[str, float]]]) -> list[dict[str, Any]]:
    """One Markdown row per backend: per batch size 'share bitwise / max ULP'."""
    rows = []
    for name, per in matrix.items():
        rows.append({"backend": name, **{f"b{bs}": f"{v['bitwise_share']:.0%} / {v['max_ulp']:.3g} / {v['max_rel_l2']:.2g}"
                                         for bs, v in per.items()}})
    return rows


def plot_batch_matrix(matrix: dict[str, dict[str, dict[str, float]]], path: Path, title: str = "") -> None:
    """Heatmap backend × batch size: colour = log10 max relative L2 vs batch 1 (white: bitwise identical),
    text = share of samples bitwise identical."""
    plt = pyplot()
    names = list(matrix)
    batches = list(next(iter(matrix.values())))
    vals = np.array([[matrix[n][b]["max_rel_l2"] for b in batches] for n in names])
    logv = np.where(vals > 0, np.log10(np.maximum(vals, 1e-30)), np.nan)
    fig, ax = plt.subplots(figsize=(1.0 * len(batches) + 4, 0.5 * len(names) + 1.8))
    cmap = plt.get_cmap("viridis").with_extremes(bad="white")  # bitwise-identical cells (log of 0) show white
    im = ax.imshow(np.ma.masked_invalid(logv), cmap=cmap, aspect="auto",
                   vmin=np.nanmin(logv) if np.isfinite(logv).any() else -8, vmax=np.nanmax(logv) if np.isfinite(logv).any() else 0)
    for i, n in enumerate(names):
        for j, b in enumerate(batches):
            ax.text(j, i, f"{matrix[n][b]['bitwise_share']:.0%}", ha="center", va="center", fontsize=7,
                    color="black" if not np.isfinite(logv[i, j]) else "white")
    ax.set_xticks(range(len(batches)), batches), ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("batch size")
    fig.colorbar(im, ax=ax, label="log10 max rel L2 vs batch 1 (white: bitwise identical)")
    ax.set_title(title or "batch invariance (text: share of samples bitwise identical to batch 1)", fontsize=9)
    save_figure(fig, path)


def bn_twin_matrix(source: Any, x: np.ndarray, batches: Sequence[int] = MATRIX_BATCHES) -> dict[str, Any]:
    """The BatchNorm twin (same topology, seeded random init) in eval and train mode, float32 torch CPU."""
    twin = bn_twin(source)
    if twin is None:
        return {}
    return {f"bn twin torch-cpu-fp32 ({mode} mode)": batch_invariance_matrix(twin_runner(twin, mode), x, torch.float32,
                                                                              batches) for mode in ("eval", "train")}


# ------------------------------------------------------------------------------------------------
# The reference framework's own error (what the judged tolerance is relative to)


@torch.no_grad()
def framework_error(model: nn.Module, x: np.ndarray, ref: np.ndarray, precision: str,
                    batch_size: int = 64, max_samples: int = 128) -> float | None:
    """rel L2 of the unfolded torch model run on CPU in `precision`'s dtype against `ref` (float64), on the
    first `max_samples` inputs (fp16/bf16 convolutions are slow on CPU: a large model on all parity inputs
    would cost minutes); None for precisions torch cannot run on CPU (tf32)."""
    p = get_precision(precision)
    if precision in ("fp64", "tf32") or p.rel_l2 is None:  # int8 is not judged by rel L2: nothing to scale
        return None
    x, ref = x[:max_samples], ref[:max_samples]
    m = copy.deepcopy(model).to(dtype=p.torch_dtype).eval()
    out = torch.cat([m(torch.from_numpy(x[i:i + batch_size]).to(p.torch_dtype)).double()
                     for i in range(0, len(x), batch_size)])
    return compare_outputs(ref, out)["rel_l2"]


# ------------------------------------------------------------------------------------------------
# Saved outputs and comparison across machines


def model_identity(manifest: dict[str, Any]) -> dict[str, Any]:
    return {"model": manifest.get("model"), "weights_sha256": manifest.get("source", {}).get("weights_sha256"),
            "onnx_sha256": {p: e.get("sha256") for p, e in (manifest.get("onnx") or {}).items()},
            "engine_sha256": {p: e.get("engine_sha256") for p, e in (manifest.get("engines") or {}).items()}}


def save_outputs(out_dir: Path, manifest: dict[str, Any], x: np.ndarray, labels: np.ndarray | None,
                 outputs: dict[str, np.ndarray], backends: dict[str, dict[str, Any]], threads: int | None) -> dict[str, Any]:
    """outputs.npz (every backend's logits, keyed by backend name, and the inputs) + provenance.json."""
    from nfdeploy.bench.machine import machine_info

    buf = io.BytesIO()
    np.savez_compressed(buf, **{f"out:{k}": v for k, v in outputs.items()}, inputs=x,
                        **({"labels": labels} if labels is not None else {}))
    atomic_write_bytes(out_dir / OUTPUTS_FILE, buf.getvalue())
    prov = {"format": "nfdeploy-parity-outputs-v1", **model_identity(manifest), "inputs_sha256": array_sha256(x),
            "inputs_shape": list(x.shape), "labels_sha256": array_sha256(labels) if labels is not None else None,
            "threads_requested": threads, "machine": machine_info(), "backends": backends,
            "outputs_sha256": {k: array_sha256(v) for k, v in outputs.items()}}
    atomic_write_json(out_dir / PROVENANCE_FILE, prov)
    return prov


def load_saved_run(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    path = Path(path)
    if not (path / PROVENANCE_FILE).is_file() or not (path / OUTPUTS_FILE).is_file():
        raise ForensicsError(f"{path} holds no saved parity outputs ({PROVENANCE_FILE} + {OUTPUTS_FILE}): "
                             "run `nfdeploy parity ... --save-outputs` first")
    prov = read_json(path / PROVENANCE_FILE, "parity provenance")
    with np.load(path / OUTPUTS_FILE) as z:
        outs = {k[4:]: z[k] for k in z.files if k.startswith("out:")}
    for k, v in outs.items():
        if prov["outputs_sha256"].get(k) != array_sha256(v):
            raise ForensicsError(f"{path / OUTPUTS_FILE}: outputs of {k} do not match {PROVENANCE_FILE} (sha256 differs)")
    return prov, outs


def _refusal(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    if a.get("model") != b.get("model"):
        return f"different models: {a.get('model')} vs {b.get('model')}"
    if a.get("weights_sha256") != b.get("weights_sha256"):
        return "different models: the weights' sha256 differ"
    common = set(a.get("onnx_sha256", {})) & set(b.get("onnx_sha256", {}))
    for p in sorted(common):
        if a["onnx_sha256"][p] != b["onnx_sha256"][p]:
            return f"different models: the {p} ONNX files' sha256 differ (two exports, not one)"
    if a.get("inputs_sha256") != b.get("inputs_sha256"):
        return f"different inputs: sha256 {a.get('inputs_sha256', '?')[:12]} vs {b.get('inputs_sha256', '?')[:12]}"
    return None


def _pair(a: np.ndarray, b: np.ndarray, precision: str) -> dict[str, Any]:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    ulps = ulp_error(b64, a64, get_precision(precision).torch_dtype)
    return {"bitwise_share": float(np.all(a == b, axis=1).mean()), "max_ulp": float(ulps.max()),
            "rel_l2": compare_outputs(a64, b64)["rel_l2"], "top1_agreement": top1_agreement(a64, b64)}


def compare_saved_runs(a: str | Path, b: str | Path, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Compare two saved parity runs backend by backend (same name in both) and across backends (every
    backend of A with every backend of B). Refuses runs of different models or inputs (ForensicsError)."""
    pa, oa = load_saved_run(a)
    pb, ob = load_saved_run(b)
    why = _refusal(pa, pb)
    if why:
        raise ForensicsError(f"cannot compare {a} with {b}: {why}")
    prec = {**{k: v.get("precision", "fp32") for k, v in pb["backends"].items()},
            **{k: v.get("precision", "fp32") for k, v in pa["backends"].items()}}
    same = [{"backend": k, **_pair(oa[k], ob[k], prec.get(k, "fp32"))} for k in oa if k in ob]
    cross = [{"a": ka, "b": kb, **_pair(oa[ka], ob[kb], prec.get(kb, "fp32"))}
             for ka, kb in itertools.product(oa, ob) if ka != kb]

    def where(p: dict[str, Any]) -> dict[str, Any]:
        m = p["machine"]
        return {"platform": m["platform"], "cpu": m["cpu"].get("model"), "gpu": (m.get("gpu") or {}).get("name"),
                "torch_threads": m.get("torch_threads"), "threads_requested": p.get("threads_requested"),
                "versions": {k: v for k, v in m["versions"].items() if k != "onnxruntime_providers"}}

    report = {"a": str(a), "b": str(b), "model": pa["model"], "inputs_sha256": pa["inputs_sha256"],
              "machine_a": where(pa), "machine_b": where(pb), "same_backend": same, "cross_backend": cross,
              "only_in_a": sorted(set(oa) - set(ob)), "only_in_b": sorted(set(ob) - set(oa))}
    if out_dir is not None:
        out_dir = Path(out_dir)
        atomic_write_json(out_dir / "compare.json", report)
        md = [f"# Compare saved parity runs: {report['model']}\n", f"A: `{a}` — {json.dumps(report['machine_a'])}\n",
              f"B: `{b}` — {json.dumps(report['machine_b'])}\n", f"Inputs sha256 {report['inputs_sha256'][:16]}… (same in both).\n",
              "## Same backend, A vs B\n", markdown_table(same, floatfmt="{:.3g}") if same else "(no backend in both)\n",
              "\n## Across backends (A row vs B column)\n", markdown_table(cross, floatfmt="{:.3g}") if cross else "(none)\n"]
        if report["only_in_a"] or report["only_in_b"]:
            md.append(f"\nOnly in A: {', '.join(report['only_in_a']) or '-'}; only in B: {', '.join(report['only_in_b']) or '-'}\n")
        atomic_write_text(out_dir / "compare.md", "\n".join(md))
    return report


__all__ = ["FEATURES", "MATRIX_BATCHES", "OUTPUTS_FILE", "PROVENANCE_FILE", "ForensicsError",
           "batch_invariance_matrix", "block_points", "bn_twin_matrix", "capture_points", "classifier_path",
           "compare_saved_runs", "first_diverging", "framework_error", "instrument_onnx", "load_saved_run",
           "matrix_rows", "model_identity", "module_ops", "onnx_point_values", "onnx_points", "per_block_markdown", "plant_conv_defect",
           "per_block_report", "plot_batch_matrix", "plot_per_block", "point_errors", "save_outputs", "torch_points"]
