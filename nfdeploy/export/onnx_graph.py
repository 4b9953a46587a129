"""ONNX graph level: export a folded torch module, fuse static pads, lint, metadata, block values.

Block values: the points of nfdeploy.check.model_points (stem, every residual block, the pre-logits
features) as ONNX values, found through the dynamo exporter's per-node name-scope metadata, and run
on ONNX Runtime as extra graph outputs: the one implementation used by parity forensics and by the
int8 per-block SQNR.

The lint enforces what folding promises: no op computes on constants at run time (weight
standardization, BN statistics), no scalar Mul left from NF constants, every Conv weight is a plain
initializer, only the ops an inference ResNet needs.
"""

from __future__ import annotations

import ast
import re
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nfdeploy.check.model_points import FEATURES, BlockStructureError
from nfdeploy.errors import require
from nfdeploy.runtime.base import BackendSpec
from nfdeploy.runtime.ort import OrtBackend

INPUT_NAME, OUTPUT_NAME = "input", "logits"
SCOPES_KEY = "pkg.torch.onnx.name_scopes"  # written by torch.onnx's dynamo exporter on every node
# Block scopes in forward order: nfdeploy's "blocks.N", timm's "stages.i.j" (the module paths of model_points).
BLOCK_SCOPES = (re.compile(r"blocks\.(\d+)"), re.compile(r"stages\.(\d+)\.(\d+)"))
CLASSIFIER_SCOPES = ("fc", "head.fc")
# Ops a folded NF-ResNet may contain. Mul only between two run-time tensors (SE gate, SiLU);
# ReduceMean only on activations (global average pool); Cast only at the graph's I/O.
NF_ALLOWED_OPS = {
    "Conv",
    "Relu",
    "Gelu",
    "Sigmoid",
    "Mul",
    "Add",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "ReduceMean",
    "Flatten",
    "Reshape",
    "Gemm",
    "MatMul",
    "Cast",
}


class IOCast(nn.Module):
    """Runs `net` in its own dtype behind float32 inputs/outputs (Cast nodes at the graph's edges)."""

    def __init__(self, net: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.net, self.dtype = net, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.to(self.dtype)).float()


def export_module(
    net: nn.Module,
    path: str | Path,
    input_shape: tuple[int, int, int],
    opset: int = 18,
    io_dtype: torch.dtype | None = torch.float32,
    example_batch: int = 2,
    pixels: bool = False,
) -> dict[str, Any]:
    """torch.onnx.export (dynamo) with a dynamic batch dimension; one self-contained file.

    The dynamo exporter specialises a dimension whose example size is 1, so the example batch is 2.
    io_dtype float32 wraps a reduced-precision net in Cast nodes; None keeps the net's own dtype. `pixels`: the
    net takes uint8 pixels (an image-input net, export.image_input)."""
    onnx = require("onnx", "onnx")
    require("onnxscript", "onnx")
    net_dtype = next(net.parameters()).dtype
    module = (IOCast(net, net_dtype) if io_dtype is not None and io_dtype != net_dtype else net).eval()
    if pixels:
        x = torch.randint(0, 256, (example_batch, *input_shape), dtype=torch.uint8, generator=torch.Generator())
    else:
        x = torch.randn(example_batch, *input_shape, dtype=io_dtype or net_dtype)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(
            module,
            (x,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=65536)},),
            opset_version=opset,
            external_data=False,
            optimize=True,
            verbose=False,
        )
    model = prog.model_proto
    fuse_pad_into_conv(model)
    seconds = time.perf_counter() - t0
    onnx.save_model(model, str(path))
    return {
        "export_seconds": seconds,
        "nodes": len(model.graph.node),
        "ops": dict(sorted(Counter(n.op_type for n in model.graph.node).items())),
    }


def _const_value(model, name: str):
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return numpy_helper.to_array(node.attribute[0].t)
    return None


def fuse_pad_into_conv(model) -> int:
    """Pad(constant 0, spatial only) -> Conv  ==>  Conv with (asymmetric) pads. Returns fusions.

    'Same' padding at a fixed input size is a static, possibly asymmetric pad; ONNX Conv's `pads`
    attribute holds it directly, so the separate Pad node (and TensorRT's padding layer) goes."""
    from onnx import helper

    g = model.graph
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    fused, remove = 0, []
    for pad in list(g.node):
        if pad.op_type != "Pad" or len(consumers.get(pad.output[0], [])) != 1:
            continue
        conv = consumers[pad.output[0]][0]
        if conv.op_type != "Conv" or conv.input[0] != pad.output[0]:
            continue
        mode = next((a.s for a in pad.attribute if a.name == "mode"), b"constant")
        pads = _const_value(model, pad.input[1]) if len(pad.input) > 1 else None
        value = _const_value(model, pad.input[2]) if len(pad.input) > 2 and pad.input[2] else 0
        axes = _const_value(model, pad.input[3]) if len(pad.input) > 3 and pad.input[3] else None
        if mode != b"constant" or pads is None or value is None or float(value) != 0.0 or axes is not None:
            continue
        pads = [int(p) for p in pads]
        if len(pads) != 8 or any(pads[i] for i in (0, 1, 4, 5)) or any(p < 0 for p in pads):
            continue
        old = next((list(a.ints) for a in conv.attribute if a.name == "pads"), [0, 0, 0, 0])
        if any(a.name == "auto_pad" and a.s not in (b"", b"NOTSET") for a in conv.attribute):
            continue
        new = [old[0] + pads[2], old[1] + pads[3], old[2] + pads[6], old[3] + pads[7]]
        for a in list(conv.attribute):
            if a.name == "pads":
                conv.attribute.remove(a)
        conv.attribute.append(helper.make_attribute("pads", new))
        conv.input[0] = pad.input[0]
        remove.append(pad)
        fused += 1
    for n in remove:
        g.node.remove(n)
    return fused


def lint_graph(model, *, allow_batchnorm: bool = False, allowed_ops: set[str] | None = None) -> dict[str, Any]:
    """Check a folded graph. Returns {"ok", "errors", "nodes", "ops"}; errors name the node."""
    allowed = set(allowed_ops or NF_ALLOWED_OPS) | ({"BatchNormalization"} if allow_batchnorm else set())
    g = model.graph
    inits = {i.name for i in g.initializer}
    const = set(inits)
    graph_in = {i.name for i in g.input}
    graph_out = {o.name for o in g.output}
    errors: list[str] = []
    for n in g.node:
        where = f"{n.name or '?'} ({n.op_type})"
        if n.op_type == "Constant":
            const.update(n.output)
            continue
        if n.op_type not in allowed:
            errors.append(f"{where}: op {n.op_type} is not allowed in a folded graph")
        inputs = [i for i in n.input if i]
        if inputs and all(i in const for i in inputs):
            errors.append(f"{where}: computes on constants at run time (unfolded weight math)")
            const.update(n.output)
        if n.op_type == "Mul" and any(i in const for i in inputs):
            errors.append(f"{where}: Mul by a constant left in the graph (an unfolded scalar)")
        if n.op_type == "Conv":
            if len(n.input) < 2 or n.input[1] not in inits:
                errors.append(f"{where}: Conv weight is not a plain initializer")
            if len(n.input) > 2 and n.input[2] and n.input[2] not in inits:
                errors.append(f"{where}: Conv bias is not a plain initializer")
        if n.op_type == "Cast" and not (set(n.input) & graph_in or set(n.output) & graph_out):
            errors.append(f"{where}: Cast inside the graph (only allowed at its inputs/outputs)")
    ops = Counter(n.op_type for n in g.node if n.op_type != "Constant")
    return {"ok": not errors, "errors": errors, "nodes": sum(ops.values()), "ops": dict(sorted(ops.items()))}


def check_onnx_file(path: str | Path) -> None:
    """onnx.checker full check plus strict shape inference; raises ValueError with one line."""
    onnx = require("onnx", "onnx")
    try:
        onnx.checker.check_model(str(path), full_check=True)
        onnx.shape_inference.infer_shapes_path(str(path), str(path) + ".inferred", check_type=True, strict_mode=True)
    except Exception as e:  # noqa: BLE001 - the checker and shape inference raise several types
        raise ValueError(f"ONNX check failed for {path}: {' '.join(str(e).split())[:300]}") from None
    finally:
        Path(str(path) + ".inferred").unlink(missing_ok=True)


def set_metadata(path: str | Path, props: dict[str, str]) -> None:
    onnx = require("onnx", "onnx")
    model = onnx.load(str(path))
    del model.metadata_props[:]
    for k, v in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, str(v)
    onnx.save_model(model, str(path))


def read_metadata(path: str | Path) -> dict[str, str]:
    onnx = require("onnx", "onnx")
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def read_input_shape(path: str | Path) -> tuple[int, int, int]:
    """(C, H, W) of the graph's first input; a file that is not a readable ONNX model → ValueError."""
    onnx = require("onnx", "onnx")
    try:
        model = onnx.load(str(path), load_external_data=False)
        dims = model.graph.input[0].type.tensor_type.shape.dim
        shape = tuple(int(d.dim_value) for d in dims[1:])
    except FileNotFoundError:
        raise ValueError(f"ONNX file not found: {path}") from None
    except Exception as e:  # noqa: BLE001 - protobuf DecodeError and friends for truncated files
        raise ValueError(f"{path} is not a readable ONNX model ({type(e).__name__})") from None
    if len(shape) != 3 or min(shape) <= 0:
        raise ValueError(f"{path}: expected a static C x H x W input after the batch dimension, got {shape}")
    return shape


# ------------------------------------------------------------------------------------------------
# Block values: the points of a model (stem, blocks, features) in an exported graph


def node_scopes(node: Any) -> list[str]:
    """The module paths a node was exported from, outermost first (e.g. ['', 'blocks', 'blocks.0', ...])."""
    for p in node.metadata_props:
        if p.key == SCOPES_KEY:
            # A Python list literal, e.g. "['', 'blocks', 'blocks.0', 'add_45']" (torch 2.9+).
            return list(ast.literal_eval(p.value)) if p.value.startswith("[") else [p.value]
    return []


def _graph_points(scopes: set[str]) -> list[str]:
    """The points present in a graph's scopes (already stripped of the wrapper prefix), in forward order."""
    for pattern in BLOCK_SCOPES:
        blocks = sorted((tuple(int(g) for g in m.groups()), s) for s in scopes if (m := pattern.fullmatch(s)))
        if blocks:
            return ["stem"] + [s for _, s in blocks] + [FEATURES]
    raise BlockStructureError("the ONNX graph has no `blocks.N` or `stages.i.j` scopes: its blocks cannot be located")


def block_values(model: Any, points: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """{point: {"value": ONNX value name, "scope": its module path in the graph, "ops": {op_type: count}}}
    of an exported folded model, for `points` (default: every point the graph holds, in forward order:
    "stem", the blocks, FEATURES).

    A block's output is the one value produced inside its scope and read outside it (or a graph output);
    FEATURES is the one non-constant input of the classifier's scope ("fc" or timm's "head.fc"). Fewer or
    more than one candidate is an error (BlockStructureError) rather than a guess."""
    consts = {i.name for i in model.graph.initializer}
    nodes = [(n, set(node_scopes(n))) for n in model.graph.node]
    every = set().union(*(s for _, s in nodes)) if nodes else set()
    if not every:
        raise BlockStructureError(
            f"the ONNX graph has no {SCOPES_KEY!r} node metadata (not exported by torch.onnx's "
            "dynamo exporter?): its blocks cannot be located"
        )
    # A reduced-precision graph with float32 I/O wraps the folded net as "net" (IOCast): scopes "net.stem", ...
    prefix = next((sc[:-4] for sc in sorted(every) if sc == "stem" or sc.endswith(".stem")), "")
    own = {sc[len(prefix) :] for sc in every if sc.startswith(prefix)}
    classifier = next((c for c in CLASSIFIER_SCOPES if c in own), None)
    outputs = {o.name for o in model.graph.output}
    out: dict[str, dict[str, Any]] = {}
    for point in points if points is not None else _graph_points(own):
        if point == FEATURES and classifier is None:
            raise BlockStructureError(f"no classifier scope ({' or '.join(CLASSIFIER_SCOPES)}) in the ONNX graph")
        scope = prefix + (classifier if point == FEATURES else point)
        inside = [n for n, s in nodes if scope in s]
        if not inside:
            raise BlockStructureError(f"no ONNX node belongs to {scope!r}")
        produced = {v for n in inside for v in n.output}
        if point == FEATURES:
            cands = sorted({v for n in inside for v in n.input if v and v not in produced and v not in consts})
        else:
            read_outside = {v for n, s in nodes if scope not in s for v in n.input}
            cands = sorted(v for v in produced if v in read_outside or v in outputs)
        if len(cands) != 1:
            raise BlockStructureError(f"{point}: expected one value leaving {scope!r} in the ONNX graph, found {cands}")
        out[point] = {"value": cands[0], "scope": scope, "ops": dict(Counter(n.op_type for n in inside))}
    return out


def with_value_outputs(model: Any, values: Sequence[str]) -> Any:
    """A copy of `model` with `values` added as graph outputs (element types from shape inference)."""
    onnx = require("onnx", "onnx")
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(g.value_info) + list(g.output) + list(g.input)}
    copy = type(model)()
    copy.CopyFrom(model)
    have = {o.name for o in copy.graph.output}
    for v in values:
        if v in have:
            continue
        if v not in types:
            raise BlockStructureError(f"the element type of ONNX value {v!r} cannot be inferred")
        copy.graph.output.append(onnx.helper.make_tensor_value_info(v, types[v], None))
        have.add(v)
    return copy


def run_with_values(
    path: str | Path,
    values: Sequence[str],
    x: np.ndarray,
    spec: BackendSpec | None = None,
    threads: int | None = None,
    batch_size: int = 64,
) -> tuple[list[np.ndarray], np.ndarray]:
    """([float64 array per value], float32 logits) of the graph at `path` with `values` added as outputs,
    run on ONNX Runtime with `spec`'s device and precision settings (default: CPU) and `threads`.
    One session, made here and freed on return: the caller holds no other session of this graph."""
    onnx = require("onnx", "onnx")
    spec = spec or BackendSpec("onnxruntime", "cpu", "fp32")
    with tempfile.TemporaryDirectory() as td:
        copy = Path(td) / Path(path).name
        onnx.save(with_value_outputs(onnx.load(str(path)), values), str(copy))
        backend = OrtBackend(spec, read_input_shape(copy), copy, threads=threads)
        got: list[list[np.ndarray]] = [[] for _ in values]
        logits = []
        with backend:
            names = [backend.output_name, *values]
            for i in range(0, len(x), batch_size):
                batch = backend.check_input(x[i : i + batch_size])
                first, *rest = backend.session.run(names, {backend.input_name: batch})
                logits.append(np.asarray(first, dtype=np.float32))
                for acc, v in zip(got, rest):
                    acc.append(np.asarray(v).astype(np.float64))
    return [np.concatenate(a) for a in got], np.concatenate(logits)
