"""A known-answer self-test of the forensics: a copy of an exported ONNX graph with one Conv's weights scaled,
whose first diverging point per-block forensics must name. Nothing in nfdeploy plants it in a user's model:
benches and tests write the copy beside the export and check the answer."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nfdeploy.errors import require
from nfdeploy.export.onnx_graph import block_values, node_scopes


def plant_conv_defect(src: str | Path, dst: str | Path, point: str, factor: float) -> str:
    """Write a copy of `src` with the weights of the first Conv inside `point` (graph order: a transition
    block's shortcut conv, else the branch's first conv) multiplied by `factor`; returns the initializer's
    name. The shortcut carries the block's input at full weight, while a branch conv is damped by the
    block's skip gain (small in a briefly trained model)."""
    onnx = require("onnx", "onnx")
    from onnx import numpy_helper

    model = onnx.load(str(src))
    scope = block_values(model, [point])[point]["scope"]
    inits = {i.name: i for i in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv" and scope in node_scopes(n) and n.input[1] in inits]
    if not convs:
        raise ValueError(f"no Conv with an initializer weight inside {point!r}")
    init = inits[convs[0].input[1]]
    w = numpy_helper.to_array(init)
    init.CopyFrom(numpy_helper.from_array((w * np.asarray(factor, dtype=w.dtype)).astype(w.dtype), init.name))
    onnx.save(model, str(dst))
    return init.name


__all__ = ["plant_conv_defect"]
