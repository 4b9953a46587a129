"""ONNX export: folded graphs, lint, precision variants, metadata, manifest, ORT parity, atomic dirs."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import run_cli
from torch import nn

from nfdeploy.artifacts import ArtifactError, Manifest, ModelSource
from nfdeploy.check.model_points import FEATURES, BlockStructureError
from nfdeploy.config import load_recipe
from nfdeploy.export import ExportError, ExportOptions, ModelToExport, export_model, export_run, load_preset
from nfdeploy.export.onnx_graph import (
    SCOPES_KEY,
    block_values,
    export_module,
    lint_graph,
    node_scopes,
    read_metadata,
    run_with_values,
)
from nfdeploy.fold import fold_model, randomize_
from nfdeploy.models import create_model
from nfdeploy.precision import PRECISIONS
from nfdeploy.train import train

FP32_REL_L2, FP16_REL_L2 = PRECISIONS["fp32"].rel_l2, PRECISIONS["fp16"].rel_l2
quiet = lambda *a, **k: None  # noqa: E731


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    """A real (short) training run on the digits dataset."""
    out = tmp_path_factory.mktemp("runs") / "nf"
    recipe = load_recipe("nf_digits", {"train.epochs": 3, "train.threads": 2})
    return train(recipe, out, progress=False, log=quiet).run_dir


@pytest.fixture(scope="module")
def digits_export(digits_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exports") / "nf"
    export_run(digits_run, out, ExportOptions(precisions=("fp32", "fp16", "bf16")), log=quiet)
    return out


def test_export_dir_manifest_and_checks(digits_export, digits_run):
    m = Manifest.read(digits_export).to_dict()
    assert {p.name for p in digits_export.iterdir()} == {
        "model.onnx",
        "model.fp16.onnx",
        "model.bf16.onnx",
        "manifest.json",
        "fold_report.json",
        "preprocessing.json",
    }
    assert m["source"]["weights_sha256"] and m["source"]["run_dir"] == str(digits_run.resolve())
    assert m["onnx"]["fp32"]["opset"] >= 18 and m["onnx"]["bf16"]["opset"] >= 22
    assert m["fold"]["totals"]["weight_standardizations"] == 10 and m["fold"]["totals"]["explicit"] == 0
    for key in ("torch", "onnx", "onnxruntime", "nfdeploy"):
        assert key in m["tools"]
    c = m["checks"]
    assert c["samples"] == 360 and c["data"] == "labelled test split"
    assert c["fp32"]["rel_l2"] <= FP32_REL_L2 and c["fp32"]["top1_agreement"] == 1.0 and c["fp32"]["status"] == "pass"
    assert c["fp16"]["rel_l2"] <= FP16_REL_L2 and c["fp16"]["status"] == "pass"
    assert c["fp16"]["top1_agreement"] >= PRECISIONS["fp16"].top1_agreement  # the same rule as parity's
    assert c["bf16"]["status"] == "unchecked" and "Conv" in c["bf16"]["reason"]
    assert abs(c["fp32"]["accuracy"] - c["fp32"]["reference_accuracy"]) < 1e-12


def test_the_manifest_reads_and_writes_the_same_json(digits_export, tmp_path):
    """Manifest is the typed form of manifest.json: reading then writing gives back the file's JSON, and the
    fields other modules read are typed."""
    on_disk = json.loads((digits_export / "manifest.json").read_text())
    m = Manifest.read(digits_export)
    assert m.to_dict() == on_disk
    assert m.input.chw == (1, 32, 32) and m.input.class_names == [str(i) for i in range(10)]
    assert m.source.kind == "run" and m.onnx["fp16"].file == "model.fp16.onnx" and m.onnx["fp32"].nodes > 0
    assert set(m.artifact_sha256s()) == {"model.onnx", "model.fp16.onnx", "model.bf16.onnx"}
    m.write(tmp_path)
    assert json.loads((tmp_path / "manifest.json").read_text()) == on_disk


def test_a_manifest_that_is_not_one_says_which_file_and_what(digits_export, tmp_path):
    from nfdeploy.artifacts import ArtifactError

    on_disk = json.loads((digits_export / "manifest.json").read_text())
    for damage, want in (
        (lambda m: m.pop("onnx"), "missing onnx"),
        (lambda m: m["onnx"]["fp16"].pop("sha256"), "onnx.fp16: missing sha256"),
        (lambda m: m.update(format="nfdeploy-export-v0"), "format 'nfdeploy-export-v0'"),
        (lambda m: m.update(input=[1, 32, 32]), "input: expected an object"),
    ):
        m = json.loads(json.dumps(on_disk))
        damage(m)
        (tmp_path / "manifest.json").write_text(json.dumps(m))
        with pytest.raises(ArtifactError, match=want) as e:
            Manifest.read(tmp_path, verify_files=False)
        assert str(tmp_path / "manifest.json") in str(e.value) and "\n" not in str(e.value)


def test_graphs_are_folded_and_lint_clean(digits_export):
    m = json.loads((digits_export / "manifest.json").read_text())
    for prec, entry in m["onnx"].items():
        model = onnx.load(str(digits_export / entry["file"]))
        lint = lint_graph(model)
        assert lint["ok"], lint["errors"]
        ops = lint["ops"]
        assert not {"BatchNormalization", "Sub", "Div", "Sqrt", "Pow"} & set(ops), ops
        conv_weights = [n.input[1] for n in model.graph.node if n.op_type == "Conv"]
        inits = {i.name: i for i in model.graph.initializer}
        assert all(w in inits for w in conv_weights)
        want = {"fp32": onnx.TensorProto.FLOAT, "fp16": onnx.TensorProto.FLOAT16, "bf16": onnx.TensorProto.BFLOAT16}[
            prec
        ]
        assert all(inits[w].data_type == want for w in conv_weights)
    # NF graph = folded BN twin's graph less its residual-stream BatchNormalizations
    twin = m["bn_twin"]
    assert (
        twin["nf_equals_twin_minus_residual_bns"]
        and twin["nodes"] - twin["residual_stream_batchnorms"] == twin["nf_nodes"]
    )


def test_metadata_props(digits_export):
    meta = read_metadata(digits_export / "model.onnx")
    assert meta["nfdeploy.model"] == "nf_resnet_c8"
    assert json.loads(meta["nfdeploy.input_shape"]) == ["batch", 1, 32, 32]
    assert json.loads(meta["nfdeploy.class_names"]) == [str(i) for i in range(10)]
    assert len(json.loads(meta["nfdeploy.mean"])) == 1 and len(json.loads(meta["nfdeploy.std"])) == 1
    assert meta["nfdeploy.source_sha256"] == Manifest.read(digits_export).source.weights_sha256


def test_dynamic_batch_matches_folded_torch(digits_export, digits_run):
    from nfdeploy.artifacts.run_dir import load_run_model

    model, _ = load_run_model(digits_run)
    folded, _ = fold_model(model)
    sess = ort.InferenceSession(str(digits_export / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 5, 17):
        x = torch.randn(batch, 1, 32, 32, generator=torch.Generator().manual_seed(batch))
        y = sess.run(None, {"input": x.numpy()})[0]
        with torch.no_grad():
            ref = folded(x).numpy()
        assert y.shape == (batch, 10)
        assert np.linalg.norm(y - ref) / np.linalg.norm(ref) <= FP32_REL_L2


def test_block_values_strict_rule(tmp_path):
    """Exactly one value leaves each block's scope, or block_values refuses: a second value made to leave
    blocks.0 (a graph output) and a graph without the exporter's scope metadata are errors, not guesses.
    The features value, run on ONNX Runtime, is the folded torch model's classifier input."""
    folded = fold_model(randomize_(create_model("nf_resnet_c8"), seed=1).double(), dtype=torch.float32)[0].eval()
    path = tmp_path / "model.onnx"
    export_module(folded, path, (3, 32, 32))
    model = onnx.load(str(path))
    points = block_values(model)
    assert list(points) == ["stem", *[f"blocks.{i}" for i in range(len(points) - 2)], FEATURES]
    assert len(points) > 3 and len({v["value"] for v in points.values()}) == len(points)
    inner = next(
        o
        for n in model.graph.node
        if "blocks.0" in node_scopes(n)
        for o in n.output
        if o != points["blocks.0"]["value"]
    )
    leaky = onnx.load(str(path))
    leaky.graph.output.append(onnx.helper.make_tensor_value_info(inner, onnx.TensorProto.FLOAT, None))
    with pytest.raises(BlockStructureError, match="expected one value leaving 'blocks.0'"):
        block_values(leaky)
    bare = onnx.load(str(path))
    for n in bare.graph.node:
        keep = [p for p in n.metadata_props if p.key != SCOPES_KEY]
        del n.metadata_props[:]
        n.metadata_props.extend(keep)
    with pytest.raises(BlockStructureError, match="no 'pkg.torch.onnx.name_scopes' node metadata"):
        block_values(bare)
    x = np.random.default_rng(0).standard_normal((5, 3, 32, 32)).astype(np.float32)
    seen = []
    hook = folded.fc.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().numpy()))
    with torch.no_grad():
        want_logits = folded(torch.from_numpy(x)).numpy()
    hook.remove()
    (features,), logits = run_with_values(path, [points[FEATURES]["value"]], x)
    assert features.dtype == np.float64 and logits.shape == want_logits.shape
    assert np.linalg.norm(features - seen[0]) <= FP32_REL_L2 * np.linalg.norm(seen[0])


def test_tampered_export_is_refused(digits_export, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(digits_export, copy)
    with open(copy / "model.fp16.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ArtifactError, match="does not match its manifest"):
        Manifest.read(copy)


def test_lint_catches_unfolded_weight_math_and_scalars(tmp_path):
    model = randomize_(create_model("nf_resnet_c8")).eval()
    export_module(model, tmp_path / "unfolded.onnx", (3, 32, 32))
    lint = lint_graph(onnx.load(str(tmp_path / "unfolded.onnx")))
    assert not lint["ok"]
    assert any("computes on constants" in e for e in lint["errors"])

    class ScaledNet(nn.Module):  # a folded net with one NF scalar left over
        def __init__(self):
            super().__init__()
            self.net = fold_model(model)[0]

        def forward(self, x):
            return self.net(x * 0.5)

    export_module(ScaledNet(), tmp_path / "scaled.onnx", (3, 32, 32))
    lint = lint_graph(onnx.load(str(tmp_path / "scaled.onnx")))
    assert any("Mul by a constant" in e for e in lint["errors"]), lint["errors"]


def test_static_asymmetric_pad_fuses_into_conv(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(3, 4, 3, stride=2)).eval()
    export_module(net, tmp_path / "pad.onnx", (3, 9, 9))
    model = onnx.load(str(tmp_path / "pad.onnx"))
    assert [n.op_type for n in model.graph.node] == ["Conv"]
    pads = next(list(a.ints) for a in model.graph.node[0].attribute if a.name == "pads")
    assert pads == [0, 0, 1, 1]
    x = torch.randn(2, 3, 9, 9)
    y = ort.InferenceSession(str(tmp_path / "pad.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"input": x.numpy()}
    )[0]
    with torch.no_grad():
        assert np.abs(y - net(x).numpy()).max() <= 1e-5


def test_bn_twin_run_keeps_only_residual_batchnorms(tmp_path):
    recipe = load_recipe("bn_digits", {"train.epochs": 1, "train.threads": 2})
    run = train(recipe, tmp_path / "bn", progress=False, log=quiet).run_dir
    m = export_run(run, tmp_path / "bn_export", ExportOptions(precisions=("fp32",)), log=quiet).manifest.to_dict()
    # 3 blocks: block 0's norm1 folds into the stem conv; blocks 1-2 norm1 + final_norm stay
    assert m["onnx"]["fp32"]["ops"]["BatchNormalization"] == 3
    assert m["checks"]["fp32"]["rel_l2"] <= FP32_REL_L2 and m["checks"]["fp32"]["top1_agreement"] == 1.0


def test_nf_resnet50_randomised_export_parity(tmp_path):
    model = randomize_(create_model("nf_resnet50"), seed=3).double().eval()
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0)).numpy()
    res = export_model(
        ModelToExport(
            model,
            fold=lambda dt: fold_model(model, dtype=dt),
            name="nf_resnet50",
            input_shape=(3, 64, 64),
            norm="nf",
            source=ModelSource(kind="test"),
            check_data=(x, None),
        ),
        tmp_path / "r50",
        opts=ExportOptions(precisions=("fp32", "fp16")),
        log=quiet,
    )
    ops = res.manifest.onnx["fp32"].ops
    assert ops["Conv"] == 53 and "BatchNormalization" not in ops and "Mul" not in ops
    assert res.checks["fp32"]["rel_l2"] <= FP32_REL_L2 and res.checks["fp32"]["top1_agreement"] == 1.0
    assert res.checks["fp16"]["rel_l2"] <= FP16_REL_L2


def test_presets():
    from nfdeploy.export import OnnxOverrides, TrtOverrides, export_options

    assert "fp16" in load_preset("default")["onnx"]["precisions"]
    with pytest.raises(ExportError, match="unknown export preset"):
        load_preset("nope")
    with pytest.raises(ExportError, match="not supported"):
        ExportOptions(precisions=("int4",))
    opts = export_options(
        "all_precisions",
        OnnxOverrides(precisions=["fp32", "fp16"], opset=20),
        trt=TrtOverrides(profiles=["1:4:8"]),
        engines=True,
    )
    assert opts.precisions == ("fp32", "fp16") and opts.opset == 20 and str(opts.trt.profiles[0]) == "1:4:8"
    assert export_options("default").trt is None
    with pytest.raises(ExportError, match="only apply to TensorRT engines: add --trt"):
        export_options(
            "default", trt=TrtOverrides(profiles=["1:8:32"])
        )  # a TensorRT setting without --trt is not silently ignored
    with pytest.raises(ExportError, match="batch profile"):
        export_options("default", trt=TrtOverrides(profiles=["0:1:2"]), engines=True)


def _one_line_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-500:], proc.stderr[-2000:])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr


def _no_leftovers(parent: Path) -> None:
    assert not [p.name for p in parent.iterdir() if ".staging-" in p.name or ".old-" in p.name]


def test_bad_inputs_are_one_line_errors_and_leave_nothing(digits_run, digits_export, tmp_path):
    before = {p.name: p.read_bytes() for p in digits_export.iterdir()}
    bad = tmp_path / "bad_run"
    shutil.copytree(digits_run, bad)
    (bad / "weights.safetensors").unlink()
    _one_line_error(run_cli("export", str(bad), "--out", str(tmp_path / "e1")), "weights file not found")
    (bad / "weights.safetensors").write_bytes((digits_run / "weights.safetensors").read_bytes()[:1000])
    _one_line_error(run_cli("export", str(bad), "--out", str(tmp_path / "e2")), "corrupt weights file")
    shutil.copy(digits_run / "weights.safetensors", bad / "weights.safetensors")
    cfg = json.loads((bad / "config.json").read_text())
    cfg["model_config"]["channels"] = [16, 32, 128]
    (bad / "config.json").write_text(json.dumps(cfg))
    _one_line_error(run_cli("export", str(bad), "--out", str(tmp_path / "e3")), "do not match the config")
    _one_line_error(run_cli("export", str(tmp_path / "no_run"), "--out", str(tmp_path / "e4")), "not found")
    _one_line_error(run_cli("export", "--timm", "resnet50", "--out", str(tmp_path / "e5")), "resnet50")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    _one_line_error(run_cli("export", str(digits_run), "--out", str(blocker / "sub")), "cannot write")
    user_dir = tmp_path / "user_dir"
    user_dir.mkdir()
    (user_dir / "notes.txt").write_text("mine")
    _one_line_error(run_cli("export", str(digits_run), "--out", str(user_dir)), "refusing to replace")
    assert (user_dir / "notes.txt").read_text() == "mine"
    # a failing export over an existing export leaves the old one intact
    bad_weights = tmp_path / "bad_weights_run"
    shutil.copytree(digits_run, bad_weights)
    (bad_weights / "weights.safetensors").write_bytes(b"\x00" * 64)
    _one_line_error(run_cli("export", str(bad_weights), "--out", str(digits_export)), "corrupt weights file")
    assert {p.name: p.read_bytes() for p in digits_export.iterdir()} == before
    _one_line_error(
        run_cli("export", str(digits_run), "--out", str(tmp_path / "e6"), "--profile", "0:1:2"), "add --trt"
    )
    for name in ("e1", "e2", "e3", "e4", "e5", "e6"):
        assert not (tmp_path / name).exists()
    _no_leftovers(tmp_path)
    _no_leftovers(digits_export.parent)


def test_reexport_replaces_the_whole_dir(digits_run, tmp_path):
    out = tmp_path / "exp"
    first = run_cli("export", str(digits_run), "--out", str(out), "--precision", "fp32,fp16")
    assert first.returncode == 0, first.stderr
    assert (out / "model.fp16.onnx").exists() and "export dir:" in first.stdout
    second = run_cli("export", str(digits_run), "--out", str(out), "--precision", "fp32", "--no-check")
    assert second.returncode == 0, second.stderr
    assert not (out / "model.fp16.onnx").exists()  # no mix of old and new files
    m = Manifest.read(out).to_dict()
    assert list(m["onnx"]) == ["fp32"] and m["checks"] == {}
    _no_leftovers(tmp_path)


def test_failed_parity_check_exits_with_numbers_and_writes_nothing(tmp_path):
    """fp16 overflow is a real failure mode: logits beyond 65504 become inf in an fp16 graph."""
    model = randomize_(create_model("nf_resnet_c8"), seed=1).double().eval()
    with torch.no_grad():
        model.fc.weight.mul_(1e6)
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)).numpy()
    with pytest.raises(ExportError) as e:
        export_model(
            ModelToExport(
                model,
                fold=lambda dt: fold_model(model, dtype=dt),
                name="overflow",
                input_shape=(3, 32, 32),
                norm="nf",
                source=ModelSource(kind="test"),
                check_data=(x, None),
            ),
            tmp_path / "out",
            opts=ExportOptions(precisions=("fp32", "fp16")),
            log=quiet,
        )
    msg = str(e.value)
    assert (
        "parity check failed" in msg and "fp16: " in msg and "non-finite" in msg and "fp32:" not in msg
    )  # fp32 passed
    assert not (tmp_path / "out").exists()
    _no_leftovers(tmp_path)


def test_cli_exports_a_timm_model(tmp_path):
    """`nfdeploy export --timm`: timm needs the test-only torchvision shim in this environment."""
    import importlib.util

    if importlib.util.find_spec("timm") is None:  # not imported here: importing it needs the shim
        pytest.skip("timm is not installed (nfdeploy[timm])")
    shim = str(Path(__file__).parent / "torchvision_shim")
    out = tmp_path / "timm"
    proc = run_cli(
        "export",
        "--timm",
        "dm_nfnet_f0",
        "--input-size",
        "65",
        "--precision",
        "fp32",
        "--out",
        str(out),
        env={"PYTHONPATH": shim},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = Manifest.read(out).to_dict()
    assert m["source"]["kind"] == "timm" and m["input"]["shape"] == ["batch", 3, 65, 65]
    assert m["onnx"]["fp32"]["lint"]["ok"] and "Pad" not in m["onnx"]["fp32"]["ops"]
    assert m["checks"]["fp32"]["rel_l2"] <= FP32_REL_L2 and m["checks"]["fp32"]["status"] == "pass"
    _one_line_error(
        run_cli("export", "--timm", "nfnet_zz", "--out", str(tmp_path / "x"), env={"PYTHONPATH": shim}), "nfnet_zz"
    )


def test_a_copied_run_and_export_pair_finds_its_run(digits_run, digits_export, tmp_path):
    """On another machine the absolute run_dir does not exist; the relative path recorded beside it does."""
    from nfdeploy.check.backends import load_export_source

    moved = tmp_path / "elsewhere"
    run = shutil.copytree(digits_run, moved / digits_run.parent.name / digits_run.name)
    exp = shutil.copytree(digits_export, moved / digits_export.parent.name / digits_export.name)
    m = json.loads((exp / "manifest.json").read_text())
    assert m["source"]["run_dir_relative"] == f"../../{digits_run.parent.name}/{digits_run.name}"
    m["source"]["run_dir"] = "/nonexistent/machine/a/run"
    (exp / "manifest.json").write_text(json.dumps(m))
    src = load_export_source(exp)
    assert src.resolved is not None and src.input_shape == (1, 32, 32)
    weights = run / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ArtifactError):  # a relocated run is still checked against the export's sha256
        load_export_source(exp)
