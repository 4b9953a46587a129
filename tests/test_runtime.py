"""The Backend interface: identity fixed at construction, activate/run/deactivate, input checks."""

import copy
import dataclasses

import numpy as np
import pytest
import torch
from conftest import model_manifest

from nfdeploy.errors import UserError
from nfdeploy.fold import fold_model, randomize_
from nfdeploy.metrics import judge
from nfdeploy.models import create_model
from nfdeploy.runtime.base import BackendInputError, BackendSpec, BackendUnavailable, run_batched
from nfdeploy.runtime.torch_backend import TorchBackend

SHAPE = (3, 32, 32)


@pytest.fixture(scope="module")
def model():
    return randomize_(create_model("nf_resnet_c8")).eval()


def test_names_say_runtime_device_precision_math_mode_and_execution_mode():
    cases = {
        BackendSpec("torch", "cpu", "fp64", "unfolded"): "torch-cpu-fp64-unfolded",
        BackendSpec("torch", "cuda", "tf32", "folded", "cudagraph"): "torch-cuda-fp32-tf32-folded-cudagraph",
        BackendSpec("onnxruntime", "cuda", "tf32"): "onnxruntime-cuda-fp32-tf32",
        BackendSpec("onnxruntime", "cuda", "fp32"): "onnxruntime-cuda-fp32",
        BackendSpec("tensorrt-rtx", "cuda", "fp16"): "tensorrt-rtx-fp16",
    }
    for spec, name in cases.items():
        assert spec.name == name
    assert len({s.name for s in cases}) == len(cases)
    assert BackendSpec("onnxruntime", "cuda", "fp32").math_mode.endswith("(TF32 off)")
    assert (
        BackendSpec("onnxruntime", "cuda", "tf32").tolerance["rel_l2"]
        > BackendSpec("onnxruntime", "cuda", "fp32").tolerance["rel_l2"]
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        BackendSpec("torch", "cpu", "fp32").precision = "tf32"
    with pytest.raises(ValueError, match="unknown precision"):
        BackendSpec("torch", "cpu", "fp8")
    with pytest.raises(ValueError, match="runtime"):
        BackendSpec("tvm", "cpu", "fp32")


def test_lifecycle_and_input_checks(model):
    calls = []

    def factory():
        calls.append(1)
        return model

    b = TorchBackend(BackendSpec("torch", "cpu", "fp32", "unfolded"), SHAPE, factory)
    assert calls == [] and not b.active  # construction touches nothing
    x = np.random.default_rng(0).standard_normal((5, *SHAPE)).astype(np.float32)
    with pytest.raises(RuntimeError, match="not active"):
        b.run(x)
    with b:
        assert b.active and calls == [1]
        out = run_batched(b, x, 2)
        with torch.no_grad():
            ref = model.double()(torch.from_numpy(x).double()).numpy()
        model.float()
        assert judge(out, ref, b.precision)["status"] == "pass"
        for bad, needle in (
            (x.astype(np.float64), "float32"),
            (x[:, :1], "shape"),
            (x[0], "shape"),
            (x[:0], "N >= 1"),
            (x.tolist(), "numpy"),
        ):
            with pytest.raises(BackendInputError, match=needle) as e:
                b.run(bad)
            assert isinstance(e.value, UserError) and "\n" not in str(e.value)
    assert not b.active and b.module is None  # deactivate frees the device copy
    with b:  # a backend can be activated again
        assert b.run(x[:1]).shape == (1, 10)


def test_cuda_backends_say_why_they_cannot_run(model):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device: the refusal path does not apply")
    for spec in (
        BackendSpec("torch", "cuda", "fp16", "folded", "eager"),
        BackendSpec("torch", "cpu", "tf32", "folded"),
    ):
        b = TorchBackend(spec, SHAPE, lambda: model)
        assert b.unavailable_reason()
        with pytest.raises(BackendUnavailable):
            b.activate()
        assert not b.active


def test_folded_model_is_shared_per_dtype(tmp_path):
    """ExportSource folds once per dtype, whatever number of backends run that dtype."""
    from nfdeploy.check.backends import ExportSource, torch_backend

    m = randomize_(create_model("nf_resnet_c8")).eval()
    src = ExportSource(model_manifest("nf_resnet_c8", SHAPE), m, tmp_path)
    first = src.folded(torch.float32)
    with torch_backend(src, BackendSpec("torch", "cpu", "fp32", "folded")) as a:
        x = np.random.default_rng(0).standard_normal((2, *SHAPE)).astype(np.float32)
        out = a.run(x)
    assert src.folded(torch.float32) is first and src.folded(torch.float16) is not first
    with torch.no_grad():
        ref = fold_model(copy.deepcopy(m).double(), dtype=torch.float64)[0](torch.from_numpy(x).double())
    assert judge(out, ref.numpy(), "fp32")["status"] == "pass"
    assert next(m.parameters()).dtype == torch.float32  # the shared unfolded model is never changed


# ------------------------------------------------------------------ issue 15 §2: failed activation, compile, ORT


def _tiny_onnx(path):
    """A real one-Gemm ONNX classifier over (N, 3, 32, 32) inputs (built with onnx.helper: no exporter needed)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((3 * 32 * 32, 10)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "w"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *SHAPE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [w],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def test_ort_truncated_onnx_is_broken_and_frees_its_half_made_session(tmp_path):
    pytest.importorskip("onnxruntime")
    from nfdeploy.runtime.base import BackendBroken
    from nfdeploy.runtime.ort import OrtBackend

    good = _tiny_onnx(tmp_path / "model.onnx")
    b = OrtBackend(BackendSpec("onnxruntime", "cpu", "fp32"), SHAPE, good)
    with b:  # the file is fine: it loads and runs
        assert b.session is not None and b.run(np.zeros((2, *SHAPE), np.float32)).shape == (2, 10)
    assert b.session is None and b.input_name is None
    blob = good.read_bytes()
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(blob[: len(blob) // 2])
    b = OrtBackend(BackendSpec("onnxruntime", "cpu", "fp32"), SHAPE, bad)
    assert b.unavailable_reason() is None  # the file exists: this machine should be able to load it
    with pytest.raises(BackendBroken, match="truncated.onnx") as e:
        b.activate()
    assert not isinstance(e.value, BackendUnavailable) and "\n" not in str(e.value)
    assert not b.active and b.session is None


class _FailsAfterSession(Exception):
    pass


def test_failed_activate_is_undone_by_deactivate(tmp_path):
    """A failure after _activate() made its session: the base class calls _deactivate(), which frees it."""
    pytest.importorskip("onnxruntime")
    from nfdeploy.runtime.base import BackendBroken
    from nfdeploy.runtime.ort import OrtBackend

    class FailsLate(OrtBackend):
        def _activate(self):
            super()._activate()
            assert self.session is not None
            raise _FailsAfterSession("after the session was made")

    b = FailsLate(BackendSpec("onnxruntime", "cpu", "fp32"), SHAPE, _tiny_onnx(tmp_path / "m.onnx"))
    with pytest.raises(BackendBroken, match="after the session"):
        b.activate()
    assert b.session is None and not b.active


def test_deactivate_tolerates_a_state_that_activate_never_made(tmp_path):
    """_deactivate() on a backend whose _activate() stopped before anything was set must not raise."""
    from nfdeploy.runtime.ort import OrtBackend
    from nfdeploy.runtime.tensorrt import TensorRTBackend

    def broken_model():
        raise RuntimeError("no model")

    for b in (
        OrtBackend(BackendSpec("onnxruntime", "cpu", "fp32"), SHAPE, tmp_path / "none.onnx"),
        TensorRTBackend(SHAPE, tmp_path / "none.engine", {"precision": "fp16"}),
        TorchBackend(BackendSpec("torch", "cpu", "fp32", "folded", "compile"), SHAPE, broken_model),
    ):
        b._deactivate()
    t = TorchBackend(BackendSpec("torch", "cpu", "fp32", "folded"), SHAPE, broken_model)
    from nfdeploy.runtime.base import BackendBroken

    with pytest.raises(BackendBroken, match="no model"):
        t.activate()
    assert not t.active and t.module is None


def test_onnxruntime_distributions_shadowing_is_named():
    from nfdeploy.runtime.ort import ORT_DISTRIBUTIONS, installed_ort_distributions, shadowing_note

    installed = installed_ort_distributions()
    assert set(installed) <= set(ORT_DISTRIBUTIONS)
    assert shadowing_note(["onnxruntime"]) == "" and shadowing_note(["onnxruntime-gpu"]) == ""
    note = shadowing_note(list(ORT_DISTRIBUTIONS))
    assert "onnxruntime-gpu" in note and "shadow" in note


def test_compile_backend_runs_every_batch_size_compiled(model):
    """Dynamo's recompile limit is 8 shapes; parity's data plus the batch matrix make more. With a
    dynamic batch dim, nine batch sizes all run compiled (and the record says so), matching eager."""
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)).eval()
    b = TorchBackend(BackendSpec("torch", "cpu", "fp32", "folded", "compile"), (3, 8, 8), lambda: net)
    sizes = list(range(2, 11))  # nine shapes > 1 (batch 1 is a graph of its own in dynamo)
    # A limit of 2 graphs instead of 8 keeps the test fast and strict: one graph must serve every size.
    with b, torch._dynamo.config.patch(recompile_limit=2):
        for n in sizes:
            x = np.random.default_rng(n).standard_normal((n, 3, 8, 8)).astype(np.float32)
            with torch.no_grad():
                ref = net.double()(torch.from_numpy(x).double()).numpy()
            net.float()
            assert judge(b.run(x), ref, "fp32")["status"] == "pass"
        assert b.compiled_batches == {n: True for n in sizes}
        assert b.describe()["compiled_batches"] == {n: True for n in sizes}
    assert b.compiled_batches == {}


def test_ort_sessions_do_not_spin_after_a_run_unless_asked(tmp_path):
    """Spinning intra-op threads take the cores from the next member of a bench round (ONNX Runtime #17011)."""
    pytest.importorskip("onnxruntime")
    from nfdeploy.runtime.ort import OrtBackend

    path = _tiny_onnx(tmp_path / "model.onnx")
    for spinning, want in ((False, "0"), (True, "1")):
        b = OrtBackend(BackendSpec("onnxruntime", "cpu", "fp32"), SHAPE, path)
        b.spinning = spinning
        with b:
            opts = b.session.get_session_options()
            assert opts.get_session_config_entry("session.intra_op.allow_spinning") == want
            assert b.describe()["intra_op_spinning"] is spinning
