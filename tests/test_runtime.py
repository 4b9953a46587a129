"""The Backend interface: identity fixed at construction, activate/run/deactivate, input checks."""

import copy
import dataclasses

import numpy as np
import pytest
import torch

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
    cases = {BackendSpec("torch", "cpu", "fp64", "unfolded"): "torch-cpu-fp64-unfolded",
             BackendSpec("torch", "cuda", "tf32", "folded", "cudagraph"): "torch-cuda-fp32-tf32-folded-cudagraph",
             BackendSpec("onnxruntime", "cuda", "tf32"): "onnxruntime-cuda-fp32-tf32",
             BackendSpec("onnxruntime", "cuda", "fp32"): "onnxruntime-cuda-fp32",
             BackendSpec("tensorrt-rtx", "cuda", "fp16"): "tensorrt-rtx-fp16"}
    for spec, name in cases.items():
        assert spec.name == name
    assert len({s.name for s in cases}) == len(cases)
    assert BackendSpec("onnxruntime", "cuda", "fp32").math_mode.endswith("(TF32 off)")
    assert BackendSpec("onnxruntime", "cuda", "tf32").tolerance["rel_l2"] > BackendSpec("onnxruntime", "cuda", "fp32").tolerance["rel_l2"]
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
        for bad, needle in ((x.astype(np.float64), "float32"), (x[:, :1], "shape"), (x[0], "shape"),
                            (x[:0], "N >= 1"), (x.tolist(), "numpy")):
            with pytest.raises(BackendInputError, match=needle) as e:
                b.run(bad)
            assert isinstance(e.value, UserError) and "\n" not in str(e.value)
    assert not b.active and b.module is None  # deactivate frees the device copy
    with b:  # a backend can be activated again
        assert b.run(x[:1]).shape == (1, 10)


def test_cuda_backends_say_why_they_cannot_run(model):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device: the refusal path does not apply")
    for spec in (BackendSpec("torch", "cuda", "fp16", "folded", "eager"), BackendSpec("torch", "cpu", "tf32", "folded")):
        b = TorchBackend(spec, SHAPE, lambda: model)
        assert b.unavailable_reason()
        with pytest.raises(BackendUnavailable):
            b.activate()
        assert not b.active


def test_folded_model_is_shared_per_dtype(tmp_path):
    """ExportSource folds once per dtype, whatever number of backends run that dtype."""
    from nfdeploy.backends import ExportSource, torch_backend

    m = randomize_(create_model("nf_resnet_c8")).eval()
    src = ExportSource({"input": {"shape": ["batch", *SHAPE]}, "source": {"kind": "run"}}, m, tmp_path)
    first = src.folded(torch.float32)
    with torch_backend(src, BackendSpec("torch", "cpu", "fp32", "folded")) as a:
        x = np.random.default_rng(0).standard_normal((2, *SHAPE)).astype(np.float32)
        out = a.run(x)
    assert src.folded(torch.float32) is first and src.folded(torch.float16) is not first
    with torch.no_grad():
        ref = fold_model(copy.deepcopy(m).double(), dtype=torch.float64)[0](torch.from_numpy(x).double())
    assert judge(out, ref.numpy(), "fp32")["status"] == "pass"
    assert next(m.parameters()).dtype == torch.float32  # the shared unfolded model is never changed
