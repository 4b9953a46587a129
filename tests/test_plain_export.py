"""The baseline export (nfdeploy.export.plain_export): torch.onnx.export of the unfolded model keeps the weight
standardisation as graph ops (the lint refuses it), computes the model's function on ONNX Runtime at any batch
size, and leaves the caller's model as it was."""

import numpy as np
import onnx
import torch

from nfdeploy.export.onnx_graph import export_module, lint_graph
from nfdeploy.export.plain_export import PLAIN_OPSET, plain_onnx_export
from nfdeploy.fold import fold_model, randomize_
from nfdeploy.metrics import compare_outputs
from nfdeploy.models import create_model
from nfdeploy.runtime.base import BackendSpec
from nfdeploy.runtime.ort import OrtBackend

SHAPE = (3, 32, 32)


def test_plain_export_is_the_unfolded_graph_and_computes_the_model(tmp_path):
    model = randomize_(create_model("nf_resnet_c8"), seed=1).double().eval()
    info = plain_onnx_export(model, tmp_path / "plain.onnx", SHAPE)
    assert next(model.parameters()).dtype == torch.float64  # the caller's model is untouched

    graph = onnx.load(str(tmp_path / "plain.onnx"))
    assert info["nodes"] == len(graph.graph.node) == sum(info["ops"].values()) and info["export_seconds"] > 0
    assert {o.domain: o.version for o in graph.opset_import}[""] == PLAIN_OPSET
    assert not lint_graph(graph)["ok"]  # weight standardisation computed in the graph: the fold's job
    folded = export_module(fold_model(model, dtype=torch.float32)[0], tmp_path / "folded.onnx", SHAPE)
    assert info["nodes"] > folded["nodes"]

    x = np.random.default_rng(0).standard_normal((3, *SHAPE)).astype(np.float32)  # a batch size not exported with
    with torch.no_grad():
        ref = model(torch.from_numpy(x).double())
    with OrtBackend(BackendSpec("onnxruntime", "cpu", "fp32"), SHAPE, tmp_path / "plain.onnx") as b:
        out = b.run(x)
    assert compare_outputs(ref, torch.from_numpy(out))["rel_l2"] < 1e-5
