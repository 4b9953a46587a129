"""TensorRT engine builds (real TensorRT-RTX builds on the CPU, no GPU needed) and the GPU runner's
refusals. Engines are built from ONNX files exported from folded, randomised models."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from nfdeploy.artifacts import sha256_file
from nfdeploy.errors import MissingExtraError
from nfdeploy.export.engine_build import (
    BatchProfile,
    EngineBuildError,
    TrtBuildOptions,
    build_engine,
    load_timing_cache,
    save_timing_cache,
)
from nfdeploy.metrics import judge
from nfdeploy.runtime.base import BackendUnavailable
from nfdeploy.runtime.tensorrt import TensorRTBackend, check_compatible, engine_spec, import_tensorrt

RTX = TrtBuildOptions(flavour="tensorrt-rtx")
HAS_GPU = torch.cuda.is_available()


def _rtx():
    """TensorRT-RTX (a dev dependency: installed wherever the tests run) for the tests that build engines;
    the pure tests below (profiles, compatibility, names) need no TensorRT at all."""
    pytest.importorskip("onnxscript", reason="ONNX export needs nfdeploy[onnx]")
    return pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX (pip install 'nfdeploy[rtx]') builds engines")


@pytest.fixture(scope="module")
def trt():
    return _rtx()


def _export(
    name: str, path: Path, shape: tuple[int, int, int], dtype=torch.float32, opset: int = 18, **overrides
) -> Path:
    from nfdeploy.export.onnx_graph import export_module
    from nfdeploy.fold import fold_model, randomize_
    from nfdeploy.models import create_model

    model = randomize_(create_model(name, **overrides)).eval()
    net, _ = fold_model(model, dtype=dtype)
    export_module(net, path, shape, opset=opset, io_dtype=torch.float32)
    return path


@pytest.fixture(scope="module")
def small(tmp_path_factory, trt) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("c8")
    return {
        "rgb": _export("nf_resnet_c8", d / "c8_rgb.onnx", (3, 32, 32), in_chans=3),
        "gray": _export("nf_resnet_c8", d / "c8_gray.onnx", (1, 32, 32), in_chans=1),
        "gray_fp16": _export("nf_resnet_c8", d / "c8_gray.fp16.onnx", (1, 32, 32), torch.float16, in_chans=1),
        "gray_bf16": _export(
            "nf_resnet_c8", d / "c8_gray.bf16.onnx", (1, 32, 32), torch.bfloat16, opset=22, in_chans=1
        ),
    }


def _check_record(r: dict, engine: Path, precision: str) -> None:
    assert engine.is_file() and engine.stat().st_size > 0
    assert r["engine_bytes"] == engine.stat().st_size
    assert r["engine_sha256"] == sha256_file(engine)
    assert r["flavour"] == "tensorrt-rtx" and r["version"] == _rtx().__version__
    assert r["precision"] == precision and r["strongly_typed"] is True
    assert r["network_layers"] > 0 and sum(r["layer_types"].values()) == r["network_layers"]
    assert r["build_seconds"] > 0
    if not HAS_GPU:
        assert r["built_without_gpu"] is True and r["gpu"] is None
    assert r["compute_capabilities"] and "9.0" not in r["compute_capabilities"]
    assert not list(engine.parent.glob(f".{engine.name}.*"))  # no temp files left by the atomic write


# ------------------------------------------------------------------------------------ options


def test_batch_profile_parse_and_validation():
    assert BatchProfile.parse("1:8:32") == BatchProfile(1, 8, 32)
    assert BatchProfile.parse(" 4 ") == BatchProfile(4, 4, 4)
    for bad in ("8:1:32", "0:1:2", "1:64:32", "a:b:c", "1:2", "1:2:3:4"):
        with pytest.raises(ValueError, match="batch profile"):
            BatchProfile.parse(bad)
    with pytest.raises(ValueError, match="1 <= min <= opt <= max"):
        BatchProfile(2, 1, 4)
    opts = TrtBuildOptions(profiles=("1:1:1", BatchProfile(2, 16, 64)))
    assert opts.profiles == (BatchProfile(1, 1, 1), BatchProfile(2, 16, 64))
    with pytest.raises(ValueError):
        TrtBuildOptions(optimization_level=9)


def test_import_tensorrt_flavours(trt):
    mod, name = import_tensorrt("tensorrt-rtx")
    assert name == "tensorrt-rtx" and mod is trt
    _, auto = import_tensorrt("auto")
    assert auto in ("tensorrt", "tensorrt-rtx")
    try:
        import tensorrt  # noqa: F401
    except Exception:  # noqa: BLE001
        with pytest.raises(MissingExtraError, match=r"nfdeploy\[trt\]"):
            import_tensorrt("tensorrt")
    for bad in ("onnxruntime", "rtx", "tensorrt_rtx"):  # one spelling per flavour
        with pytest.raises(ValueError, match="unknown TensorRT flavour"):
            import_tensorrt(bad)


# ------------------------------------------------------------------------------ small models


def test_build_small_fp32_rgb(small, tmp_path):
    engine = tmp_path / "c8.engine"
    r = build_engine(small["rgb"], engine, "fp32", (3, 32, 32), RTX)
    _check_record(r, engine, "fp32")
    assert r["profiles"] == [{"min": 1, "opt": 8, "max": 32}]
    assert r["input"] == {"name": "input", "shape": ["batch", 3, 32, 32]}
    assert r["tf32"] == {"requested": True, "flag": "set", "effective": True}
    assert r["optimization_level"] == 3 and r["profiling_verbosity"] == "DETAILED"
    assert r["layer_types"]["CONVOLUTION"] == 10 and "SCALE" not in r["layer_types"]
    assert set(r["layer_output_dtypes"]) == {"FLOAT"}
    # Default targets: every SM the installed RTX knows, Turing (7.5) opt-in, never Hopper.
    assert "7.5" not in r["compute_capabilities"] and {"8.6", "8.9"} <= set(r["compute_capabilities"])
    assert set(r["compute_capabilities"]) <= set(r["supported_compute_capabilities"])


def test_build_small_gray_profiles_tf32_off_targets(small, tmp_path):
    engine = tmp_path / "gray.engine"
    opts = TrtBuildOptions(
        flavour="tensorrt-rtx",
        profiles=(BatchProfile(1, 1, 4), BatchProfile(8, 64, 256)),
        tf32=False,
        optimization_level=1,
        compute_capabilities=("8.6", "SM89"),
        detailed_profiling=False,
        workspace_mb=256,
    )
    r = build_engine(small["gray"], engine, "fp32", (1, 32, 32), opts)
    _check_record(r, engine, "fp32")
    assert r["profiles"] == [{"min": 1, "opt": 1, "max": 4}, {"min": 8, "opt": 64, "max": 256}]
    assert r["tf32"] == {"requested": False, "flag": "cleared", "effective": False}
    assert r["optimization_level"] == 1 and r["profiling_verbosity"] != "DETAILED"
    assert r["compute_capabilities"] == ["8.6", "8.9"] and r["compute_capability_source"] == "requested"


def test_build_small_fp16_is_half_compute(small, tmp_path):
    engine = tmp_path / "gray.fp16.engine"
    r = build_engine(small["gray_fp16"], engine, "fp16", (1, 32, 32), RTX)
    _check_record(r, engine, "fp16")
    dtypes = r["layer_output_dtypes"]
    assert dtypes.get("HALF", 0) > dtypes.get("FLOAT", 0)  # only the output Cast is float32
    assert r["layer_types"].get("CAST") == 2


def test_build_bf16_opset22(small, tmp_path):
    """TensorRT-RTX 1.7 accepts the opset-22 bf16 graph for Ampere+ targets; Turing has no bf16."""
    engine = tmp_path / "gray.bf16.engine"
    r = build_engine(small["gray_bf16"], engine, "bf16", (1, 32, 32), RTX)
    _check_record(r, engine, "bf16")
    assert r["layer_output_dtypes"].get("BF16", 0) > 0
    turing = tmp_path / "gray.bf16.sm75.engine"
    with pytest.raises(EngineBuildError, match="sm75") as ei:
        build_engine(
            small["gray_bf16"],
            turing,
            "bf16",
            (1, 32, 32),
            TrtBuildOptions(flavour="tensorrt-rtx", compute_capabilities=("7.5",)),
        )
    assert ei.value.errors and not turing.exists()


def test_bad_compute_capability_and_precision(small, tmp_path):
    with pytest.raises(ValueError, match="not supported by TensorRT-RTX"):
        build_engine(
            small["rgb"],
            tmp_path / "x.engine",
            "fp32",
            (3, 32, 32),
            TrtBuildOptions(flavour="tensorrt-rtx", compute_capabilities=("9.0",)),
        )
    for bad in ("int8-ort", "fp8"):  # ONNX Runtime's int8 form has no engine; fp8 is not in the table
        with pytest.raises(ValueError, match="precision"):
            build_engine(small["rgb"], tmp_path / "x.engine", bad, (3, 32, 32), RTX)
    with pytest.raises(EngineBuildError, match="expected"):
        build_engine(small["rgb"], tmp_path / "x.engine", "fp32", (1, 32, 32), RTX)  # wrong channel count
    assert not (tmp_path / "x.engine").exists()


# ------------------------------------------------------------------------------------ failures


def test_truncated_onnx_fails_cleanly(small, tmp_path):
    data = small["rgb"].read_bytes()
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(data[: len(data) // 2])
    engine = tmp_path / "truncated.engine"
    engine_old = tmp_path / "kept.engine"
    engine_old.write_bytes(b"previous engine")
    with pytest.raises(EngineBuildError) as ei:
        build_engine(bad, engine, "fp32", (3, 32, 32), RTX)
    assert "could not parse truncated.onnx" in str(ei.value) and "\n" not in str(ei.value)
    assert ei.value.errors and all({"node", "op", "message"} <= set(e) for e in ei.value.errors)
    assert not engine.exists() and not list(tmp_path.glob(".truncated.engine.*"))
    # A failed rebuild over an existing engine keeps the old file intact.
    with pytest.raises(EngineBuildError):
        build_engine(bad, engine_old, "fp32", (3, 32, 32), RTX)
    assert engine_old.read_bytes() == b"previous engine"
    empty = tmp_path / "empty.onnx"  # an empty protobuf is a valid, empty ModelProto: it "parses"
    empty.write_bytes(b"")
    with pytest.raises(EngineBuildError, match="empty or foreign network"):
        build_engine(empty, engine, "fp32", (3, 32, 32), RTX)
    with pytest.raises(EngineBuildError, match="not found"):
        build_engine(tmp_path / "missing.onnx", engine, "fp32", (3, 32, 32), RTX)
    assert not engine.exists()


def test_unsupported_op_names_the_node(tmp_path):
    from onnx import TensorProto, helper, save

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1, 8, 8])
    node = helper.make_node("FrobnicateXYZ", ["input"], ["logits"], name="frob_0", domain="com.example")
    model = helper.make_model(
        helper.make_graph([node], "g", [x], [y]),
        opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.example", 1)],
    )
    path = tmp_path / "unknown_op.onnx"
    save(model, str(path))
    with pytest.raises(EngineBuildError, match="frob_0 \\(FrobnicateXYZ\\)") as ei:
        build_engine(path, tmp_path / "u.engine", "fp32", (1, 8, 8), RTX)
    assert ei.value.errors[0]["node"] == "frob_0" and ei.value.errors[0]["op"] == "FrobnicateXYZ"
    assert not (tmp_path / "u.engine").exists()


# ---------------------------------------------------------------------------------- timing cache


def test_timing_cache_not_used_by_rtx(small, tmp_path):
    cache = tmp_path / "timing.cache"
    r = build_engine(
        small["rgb"],
        tmp_path / "c8.engine",
        "fp32",
        (3, 32, 32),
        TrtBuildOptions(flavour="tensorrt-rtx", timing_cache=cache),
    )
    assert r["timing_cache"]["supported"] is False and r["timing_cache"]["used"] is False
    assert "no-op" in r["timing_cache"]["note"] and not cache.exists()


def test_timing_cache_file_roundtrip(tmp_path, trt):
    """The load/save plumbing the TensorRT flavour uses, against the real (RTX) ITimingCache API."""
    cache_path = tmp_path / "sub" / "timing.cache"
    # RTX's timing-cache calls are no-ops that still try to create a CUDA stream: silence their errors.
    builder = trt.Builder(trt.Logger(trt.Logger.INTERNAL_ERROR))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        config = builder.create_builder_config()
        cache, info = load_timing_cache(config, cache_path)
        assert info["loaded"] is False and info["loaded_bytes"] == 0
        save_timing_cache(config, cache, cache_path, info)
        assert cache_path.is_file() and info["saved_bytes"] == cache_path.stat().st_size > 0 and info["updated"]
        config2 = builder.create_builder_config()
        cache2, info2 = load_timing_cache(config2, cache_path)
        assert info2["loaded"] is True and info2["loaded_bytes"] == info["saved_bytes"]
        save_timing_cache(config2, cache2, cache_path, info2)
        assert info2["updated"] is False  # nothing new was timed: the file is left alone


@pytest.mark.skipif(not HAS_GPU, reason="TensorRT proper builds need a CUDA GPU (and the tensorrt package)")
def test_timing_cache_reused_by_tensorrt(small, tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT proper is not installed (pip install 'nfdeploy[trt]')")
    cache = tmp_path / "timing.cache"
    opts = TrtBuildOptions(flavour="tensorrt", timing_cache=cache)
    r1 = build_engine(small["rgb"], tmp_path / "a.engine", "fp32", (3, 32, 32), opts)
    assert r1["timing_cache"]["used"] and not r1["timing_cache"]["loaded"] and cache.is_file()
    r2 = build_engine(small["rgb"], tmp_path / "b.engine", "fp32", (3, 32, 32), opts)
    assert r2["timing_cache"]["loaded"] and r2["timing_cache"]["loaded_bytes"] > 0


# ---------------------------------------------------------------------------------- ResNet-50


@pytest.mark.slow
def test_resnet50_fp32_fp16_nf_vs_bn_twin(tmp_path, trt):
    """224x224 ResNet-50 builds (fold + export ~5 s each, RTX AOT build ~1 s each on 2 CPU cores).
    The folded NF network parses into fewer layers than its folded BN twin: the twin keeps one
    BatchNormalization (a TensorRT Scale layer) per residual-stream norm."""
    shape = (3, 224, 224)
    records = {}
    for name in ("nf_resnet50", "bn_resnet50"):
        for prec, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
            if name == "bn_resnet50" and prec == "fp16":
                continue
            onnx_path = _export(name, tmp_path / f"{name}.{prec}.onnx", shape, dtype)
            engine = tmp_path / f"{name}.{prec}.engine"
            records[name, prec] = r = build_engine(onnx_path, engine, prec, shape, RTX)
            _check_record(r, engine, prec)
    nf32, nf16, bn32 = records["nf_resnet50", "fp32"], records["nf_resnet50", "fp16"], records["bn_resnet50", "fp32"]
    assert nf32["network_layers"] < bn32["network_layers"]
    assert "SCALE" not in nf32["layer_types"] and bn32["layer_types"]["SCALE"] > 0
    assert nf32["layer_types"]["CONVOLUTION"] == bn32["layer_types"]["CONVOLUTION"] == 53
    assert nf16["network_layers"] == nf32["network_layers"] + 2  # the two I/O Casts
    assert nf16["engine_bytes"] < 0.7 * nf32["engine_bytes"]  # half-size weights dominate the engine


# ------------------------------------------------------------------------------------- runner


@pytest.mark.skipif(HAS_GPU, reason="checks the refusal on a machine without a CUDA GPU")
def test_runner_refuses_without_gpu(tmp_path):
    backend = TensorRTBackend(
        (3, 32, 32), tmp_path / "missing.engine", {"flavour": "tensorrt-rtx", "precision": "fp16"}
    )
    assert "CUDA GPU" in backend.unavailable_reason()
    with pytest.raises(BackendUnavailable, match="CUDA GPU"):
        backend.activate()
    assert not backend.active


def test_engine_backend_identity_follows_the_build_record():
    """An fp32 engine built with TF32 (TensorRT's default) is a TF32 backend, judged at TF32's tolerance;
    with TF32 cleared it is fp32. The name carries flavour and precision, and never changes."""
    tf32 = engine_spec({"flavour": "tensorrt-rtx", "precision": "fp32", "tf32": {"effective": True}})
    ieee = engine_spec({"flavour": "tensorrt", "precision": "fp32", "tf32": {"effective": False}})
    half = engine_spec({"flavour": "tensorrt-rtx", "precision": "fp16", "tf32": {"effective": True}})
    assert (tf32.name, tf32.precision, tf32.tolerance["rel_l2"]) == ("tensorrt-rtx-fp32-tf32", "tf32", 1e-3)
    assert (ieee.name, ieee.precision, ieee.tolerance["rel_l2"]) == ("tensorrt-fp32", "fp32", 1e-5)
    assert (half.name, half.precision) == ("tensorrt-rtx-fp16", "fp16")
    b = TensorRTBackend((3, 8, 8), "x.engine", {"flavour": "tensorrt-rtx", "precision": "fp32"})
    with pytest.raises(AttributeError):
        b.precision = "fp32"  # identity is read-only


def test_runner_compatibility_checks():
    entry = {"flavour": "tensorrt-rtx", "version": "1.7.1.116", "compute_capabilities": ["8.6", "8.9"]}
    ada = {"name": "RTX 4090", "compute_capability": "8.9"}
    check_compatible(entry, "tensorrt-rtx", "1.7.1.116", ada)
    check_compatible(None, "tensorrt-rtx", "1.7.1.116", ada)
    with pytest.raises(BackendUnavailable, match="Hopper"):
        check_compatible(entry, "tensorrt-rtx", "1.7.1.116", {"name": "H100", "compute_capability": "9.0"})
    with pytest.raises(BackendUnavailable, match="Hopper"):
        check_compatible(None, "tensorrt-rtx", "1.7.1.116", {"name": "H100", "compute_capability": "9.0"})
    with pytest.raises(BackendUnavailable, match="built by tensorrt-rtx"):
        check_compatible(entry, "tensorrt", "10.13.0", ada)
    with pytest.raises(BackendUnavailable, match="only load in the version"):
        check_compatible(entry, "tensorrt-rtx", "1.8.0", ada)
    with pytest.raises(BackendUnavailable, match="compute capabilities"):
        check_compatible(entry, "tensorrt-rtx", "1.7.1.116", {"name": "A100", "compute_capability": "8.0"})
    trt_entry = {"flavour": "tensorrt", "version": "10.13.0", "compute_capabilities": ["9.0"]}
    check_compatible(trt_entry, "tensorrt", "10.13.0", {"name": "H100", "compute_capability": "9.0"})


@pytest.mark.skipif(not HAS_GPU, reason="running an engine needs a CUDA GPU")
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_runner_matches_onnxruntime(small, tmp_path, cuda_graph):
    """On a GPU this runs: a flavour that cannot serve this GPU (an RTX engine on Hopper) or an engine that
    fails to deserialize FAILS the test with the runtime's reason; it is not skipped."""
    from nfdeploy.runtime.base import BackendSpec, run_batched
    from nfdeploy.runtime.ort import OrtBackend

    engine = tmp_path / "c8.engine"
    r = build_engine(small["rgb"], engine, "fp32", (3, 32, 32), TrtBuildOptions(flavour="auto", tf32=False))
    backend = TensorRTBackend((3, 32, 32), engine, r, cuda_graph=cuda_graph)
    assert backend.unavailable_reason() is None, backend.unavailable_reason()
    x = np.random.default_rng(0).standard_normal((37, 3, 32, 32)).astype(np.float32)
    with OrtBackend(BackendSpec("onnxruntime", "cpu", "fp32"), (3, 32, 32), small["rgb"]) as ort_cpu:
        ref = run_batched(ort_cpu, x, 16)
    with backend:
        for _ in range(2):  # the second pass replays captured graphs
            out = run_batched(backend, x, 16)
            assert out.shape == ref.shape and out.dtype == np.float32
            row = judge(out, ref, backend.precision)
            assert row["status"] == "pass", row
    assert backend.precision == "fp32" and backend.name.endswith("-fp32")


# ---------------------------------------------------------------------------------------------- CLI


def _digits_run(tmp_path: Path) -> Path:
    from nfdeploy.config import load_recipe
    from nfdeploy.train import train

    recipe = load_recipe("nf_digits", {"train.epochs": 1, "train.threads": 2})
    return train(recipe, tmp_path / "run", progress=False, log=lambda *a, **k: None).run_dir


def test_cli_export_trt_builds_engines_into_the_manifest(tmp_path, trt):
    import json

    from conftest import run_cli

    from nfdeploy.artifacts import Manifest

    run = _digits_run(tmp_path)
    out = tmp_path / "exp"
    proc = run_cli(
        "export",
        str(run),
        "--out",
        str(out),
        "--trt",
        "--trt-flavour",
        "tensorrt-rtx",
        "--precision",
        "fp32,fp16",
        "--profile",
        "1:8:32",
        "--profile",
        "64:64:128",
        "--no-tf32",
        "--opt-level",
        "2",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = Manifest.read(out).to_dict()  # verifies every ONNX and engine sha256
    assert set(m["engines"]) == {"fp32", "fp16"}
    e = m["engines"]["fp32"]
    assert e["flavour"] == "tensorrt-rtx" and e["version"] == trt.__version__ and e["precision"] == "fp32"
    assert e["profiles"] == [{"min": 1, "opt": 8, "max": 32}, {"min": 64, "opt": 64, "max": 128}]
    assert e["tf32"]["requested"] is False and e["optimization_level"] == 2 and e["network_layers"] > 0
    assert (out / e["file"]).stat().st_size == e["engine_bytes"] > 0
    if not HAS_GPU:
        assert e["built_without_gpu"] and e["compute_capabilities"]
    # the fp16 engine's network computes in half precision: precision comes from the graph
    assert m["engines"]["fp16"]["layer_output_dtypes"].get("HALF", 0) > 0
    ins = run_cli("inspect", str(out / "model.fp16.engine"))
    assert ins.returncode == 0, ins.stderr
    info = json.loads(ins.stdout)
    assert info["matches_record"] is True and info["record"]["network_layers"] == m["engines"]["fp16"]["network_layers"]
    if not HAS_GPU:
        assert info["inspector"]["status"] == "skipped" and "GPU" in info["inspector"]["reason"]
    listing = run_cli("backends", str(out), "--json")
    assert listing.returncode == 0, listing.stderr
    rows = {r["name"]: r for r in json.loads(listing.stdout)}
    assert len(rows) == len(json.loads(listing.stdout))  # unique names
    assert rows["tensorrt-rtx-fp32"]["precision"] == "fp32"  # built with --no-tf32: judged as fp32
    assert rows["tensorrt-rtx-fp16"]["tolerance"]["rel_l2"] == 1e-2
    if not HAS_GPU:
        assert (
            rows["tensorrt-rtx-fp16"]["status"] == "unavailable" and "CUDA GPU" in rows["tensorrt-rtx-fp16"]["reason"]
        )


def test_cli_engine_bad_onnx_and_missing_flavour(tmp_path, small):
    from conftest import run_cli

    trunc = tmp_path / "trunc.onnx"
    trunc.write_bytes(small["rgb"].read_bytes()[:300])
    proc = run_cli("engine", str(trunc), "--out", str(tmp_path / "x.engine"), "--trt-flavour", "tensorrt-rtx")
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "trunc.onnx" in proc.stderr
    assert not (tmp_path / "x.engine").exists()
    ok = run_cli("engine", str(small["gray"]), "--out", str(tmp_path / "g.engine"), "--trt-flavour", "tensorrt-rtx")
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "g.engine").stat().st_size > 0
    try:
        import tensorrt  # noqa: F401
    except Exception:  # noqa: BLE001 - the usual case here: TensorRT proper is not installable from PyPI alone
        run = _digits_run(tmp_path)
        proc = run_cli(
            "export", str(run), "--out", str(tmp_path / "e"), "--trt", "--trt-flavour", "tensorrt", "--no-check"
        )
        assert proc.returncode == 2 and "nfdeploy[trt]" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "e").exists()
