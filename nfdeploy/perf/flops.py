"""The one place a model's arithmetic is counted, per sample: from its ONNX graph (onnx_macs: Conv,
ConvTranspose, Gemm and MatMul) or from the torch module (torch_macs: torch.utils.flop_counter, for
exports without a graph). Achieved GFLOP/s = 2 x MACs x batch / latency. Elementwise ops, pooling and
activations are not counted by either (a small share of a ResNet's arithmetic, and not what a matmul
peak measures); tests cross-check the two counts on the same model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nfdeploy.errors import require


def _shapes(model: Any) -> dict[str, list[int]]:
    out = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            out[vi.name] = [d.dim_value for d in dims]
    for init in model.graph.initializer:
        out[init.name] = list(init.dims)
    return out


def onnx_macs(path: str | Path) -> int:
    """Multiply-accumulates of one sample through the ONNX graph at `path` (batch dims set to 1)."""
    onnx = require("onnx", "onnx")
    model = onnx.load(str(path), load_external_data=False)
    for vi in list(model.graph.input) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1
    del model.graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model)
    shapes = _shapes(model)
    macs = 0
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose"):
            w, y = shapes.get(node.input[1]), shapes.get(node.output[0])
            if w is None or y is None:
                raise ValueError(f"{path}: no shape for {node.op_type} {node.name!r}")
            # Conv: every output element sums C/groups x kh x kw products. ConvTranspose: every input element
            # scatters into C_out/groups x kh x kw outputs.
            if node.op_type == "Conv":
                macs += int(np.prod(y)) * int(np.prod(w[1:]))
            else:
                x = shapes[node.input[0]]
                macs += int(np.prod(x)) * int(np.prod(w[1:]))
        elif node.op_type in ("Gemm", "MatMul"):
            a, y = shapes.get(node.input[0]), shapes.get(node.output[0])
            if a is None or y is None:
                raise ValueError(f"{path}: no shape for {node.op_type} {node.name!r}")
            trans_a = any(at.name == "transA" and at.i for at in node.attribute)
            k = a[-2] if trans_a and len(a) >= 2 else a[-1]
            macs += int(np.prod(y)) * int(k)
    return macs


def torch_macs(model: Any, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one sample through the torch `model` (torch.utils.flop_counter counts 2 FLOPs
    per multiply-accumulate of convolutions and matmuls), on a zero batch of one in the model's dtype/device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    p = next(model.parameters())
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, *[int(s) for s in input_shape], dtype=p.dtype, device=p.device))
    return counter.get_total_flops() // 2


def gflops(macs_per_sample: int | None, batch: int, latency_ms: float | None) -> float | None:
    """Achieved GFLOP/s (2 FLOPs per multiply-accumulate)."""
    if not macs_per_sample or not latency_ms:
        return None
    return 2.0 * macs_per_sample * batch / (latency_ms / 1e3) / 1e9


__all__ = ["gflops", "onnx_macs", "torch_macs"]
