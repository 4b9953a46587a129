"""The baseline nfdeploy's export is measured against: `torch.onnx.export` (dynamo) of the unfolded model as a
user calls it without nfdeploy (no fold, no graph clean-up of ours), with a dynamic batch dimension."""

from __future__ import annotations

import copy
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nfdeploy.errors import require

PLAIN_OPSET = 18


def plain_onnx_export(
    model: nn.Module, path: str | Path, input_shape: tuple[int, int, int], dtype: torch.dtype = torch.float32
) -> dict[str, Any]:
    """Export a copy of `model` in `dtype` (weights and input; `model` itself is left as it is) to `path` by
    plain torch.onnx.export (dynamo, opset PLAIN_OPSET, batch dynamic from 1 to 4096, example batch 2).
    Returns {"nodes", "ops": {op type: count}, "export_seconds"}."""
    onnx = require("onnx", "onnx")
    require("onnxscript", "onnx")  # torch.onnx's dynamo exporter needs it
    net = copy.deepcopy(model).to(dtype).eval()
    x = torch.randn(2, *input_shape, dtype=dtype)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (x,),
            str(path),
            dynamo=True,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
            opset_version=PLAIN_OPSET,
            external_data=False,
            verbose=False,
        )
    seconds = time.perf_counter() - t0
    graph = onnx.load(str(path)).graph
    return {
        "nodes": len(graph.node),
        "ops": dict(sorted(Counter(n.op_type for n in graph.node).items())),
        "export_seconds": seconds,
    }


__all__ = ["PLAIN_OPSET", "plain_onnx_export"]
