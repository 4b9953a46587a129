"""Parity forensics on a real digits run: error per block (torch hooks, instrumented ONNX on ONNX Runtime),
the first diverging block of a planted defect, the batch-invariance matrix, saved outputs compared."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from nfdeploy.artifacts import InputSpec, Manifest, ModelSource, OnnxEntry
from nfdeploy.check.backends import REFERENCE, export_backends, load_export_source
from nfdeploy.check.batch_matrix import batch_invariance_matrix, profile_reason
from nfdeploy.check.model_points import FEATURES, block_points, capture_points
from nfdeploy.check.parity import ParityOptions, load_parity_data, parity_report
from nfdeploy.check.per_block import HEAD, onnx_points, per_block_markdown, per_block_report
from nfdeploy.check.planted import plant_conv_defect
from nfdeploy.check.saved_outputs import OUTPUTS_FILE, PROVENANCE_FILE, SavedRunError, compare_saved_runs, save_outputs
from nfdeploy.config import load_recipe
from nfdeploy.export import ExportOptions, export_run
from nfdeploy.export.onnx_graph import block_values, node_scopes
from nfdeploy.metrics import judge, ulp_error
from nfdeploy.precision import REFERENCE_ERROR_FACTOR, judged_tolerance
from nfdeploy.runtime.base import BackendSpec, run_batched
from nfdeploy.runtime.ort import OrtBackend
from nfdeploy.train import train

quiet = lambda *a, **k: None  # noqa: E731
# The folded model computes the unfolded one's function; in float64 the two differ by rounding alone.
FOLD_FP64_REL = 1e-12
# A planted defect: one Conv's weights × (1 + DEFECT) inside the block under test.
DEFECT = 0.01
# A defect in the head alone: the classifier's weights of one class × (1 + HEAD_DEFECT) (logits rel L2 ~3e-4).
HEAD_DEFECT = 0.001


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("forensics")
    run = train(load_recipe("nf_digits", {"train.epochs": 2, "train.threads": 2}), d / "run", progress=False, log=quiet)
    export_run(run.run_dir, d / "export", ExportOptions(precisions=("fp32", "fp16"), check_samples=64), log=quiet)
    return d / "export"


def test_ulp_and_judged_tolerance():
    one = np.float32(1.0)
    assert ulp_error(np.nextafter(one, np.float32(2)), one, torch.float32)[()] == 1.0
    assert ulp_error(np.float32(1.0), 1.0, torch.float32)[()] == 0.0
    assert ulp_error(np.float32(1.0 + 2**-10), 1.0, torch.float16)[()] == 1.0
    # One step of the dtype at representable values of every magnitude, subnormals included: the next
    # value away from zero is exactly 1 ULP away (numpy's own nextafter in float16/float32).
    rng = np.random.default_rng(0)
    for np_dtype, dtype in ((np.float16, torch.float16), (np.float32, torch.float32)):
        fi = np.finfo(np_dtype)
        v = (rng.standard_normal(2000) * np.exp2(rng.integers(fi.minexp - 8, fi.maxexp - 1, 2000))).astype(np_dtype)
        v = v[np.isfinite(v) & (v != 0)]
        up = np.nextafter(v, np.copysign(np.inf, v).astype(np_dtype))  # away from zero: the step of v's binade
        assert np.array_equal(ulp_error(up, v, dtype), np.ones(len(v))), np_dtype
    assert ulp_error(np.float64(3.0 + 2.0**-6), 3.0, torch.bfloat16)[()] == 1.0  # bf16 at 3: step 2^1 × 2^-7
    # The reference is not rounded to the dtype first: just below 2 (which float16 rounds up to 2, step
    # 2^-9) the float16 step is 2^-10.
    below_two = 2.0 - 2.0**-12
    assert ulp_error(np.float64(below_two + 2.0**-10), below_two, torch.float16)[()] == 1.0
    assert judged_tolerance("fp32", 1e-7)["rel_l2"] == 1e-5  # the floor
    t = judged_tolerance("fp32", 6e-6)
    assert t["rel_l2"] == REFERENCE_ERROR_FACTOR * 6e-6 and t["floor_rel_l2"] == 1e-5 and t["framework_rel_l2"] == 6e-6


@torch.no_grad()
def test_points_of_unfolded_and_folded_agree(export_dir):
    source = load_export_source(export_dir)
    x = torch.randn(4, *source.input_shape, generator=torch.Generator().manual_seed(0)).double()
    unfolded, folded = source.model.double(), source.folded(torch.float64)
    names = [p for p, _ in block_points(folded)]
    assert names == [p for p, _ in block_points(unfolded)]
    assert (
        names[0] == "stem" and names[-1] == FEATURES and names[1:-1] == [f"blocks.{i}" for i in range(len(names) - 2)]
    )
    with capture_points(unfolded) as a, capture_points(folded) as b:
        unfolded(x), folded(x)
    for p in names[:-1]:  # the folded features are scaled by 1/final gain (moved into fc): see per_block_report
        ref = a[p][0]
        assert np.linalg.norm(b[p][0] - ref) <= FOLD_FP64_REL * np.linalg.norm(ref), p
    cos = np.sum(a[FEATURES][0] * b[FEATURES][0]) / np.linalg.norm(a[FEATURES][0]) / np.linalg.norm(b[FEATURES][0])
    assert abs(cos - 1) <= FOLD_FP64_REL
    source.model.float()


def test_parity_per_block_matrix_and_saved_outputs(export_dir, tmp_path):
    options = ParityOptions(
        only=["cpu-fp32", "onnxruntime-cpu-fp16"],
        max_samples=64,
        invariance_samples=16,
        per_block=True,
        per_block_samples=32,
        batch_matrix=True,
        save_outputs=True,
        threads=2,
    )
    rep = parity_report(export_dir, tmp_path / "r", options, log=quiet).to_dict()
    assert rep["ok"], rep["failed"]
    fw = rep["framework_errors"]["fp32"]
    row = {r["name"]: r for r in rep["backends"]}["onnxruntime-cpu-fp32"]
    assert row["tolerance"]["framework_rel_l2"] == fw and row["tolerance"]["rel_l2"] == max(1e-5, 2 * fw)
    pb = rep["per_block"]["backends"]
    for name in ("torch-cpu-fp32-folded", "onnxruntime-cpu-fp32", "onnxruntime-cpu-fp16"):
        r = pb[name]
        assert r["status"] == "ok" and [p["point"] for p in r["points"]] == rep["per_block"]["points"]
        assert "first_diverging" not in r and r["conclusion"].startswith("within rel L2")
        assert all(p["rel_l2"] <= r["tolerance_rel_l2"] and np.isfinite(p["max_ulp"]) for p in r["points"])
    # Adding graph outputs did not change what ORT computes at the logits.
    assert pb["onnxruntime-cpu-fp32"]["instrumented_logits_bitwise_equal"]
    m = rep["batch_matrix"]["backends"]
    assert set(m["onnxruntime-cpu-fp32"]) == {"2", "3", "7", "8", "16", "32", "64"}
    for name in ("onnxruntime-cpu-fp32", "torch-cpu-fp32-folded"):
        assert all(v["max_rel_l2"] <= 1e-5 for v in m[name].values())  # NF: no batch statistics
    train_mode = m["bn twin torch-cpu-fp32 (train mode)"]
    assert train_mode["64"]["bitwise_share"] == 0.0 and train_mode["64"]["max_rel_l2"] > 1e-3  # the contrast
    for f in ("parity.md", "per_block.png", "batch_matrix.png", "outputs.npz", "provenance.json"):
        assert (tmp_path / "r" / f).is_file(), f


def test_onnx_mapping_names_every_block(export_dir):
    import onnx

    source = load_export_source(export_dir)
    names = [p for p, _ in block_points(source.folded())]
    mapping = block_values(onnx.load(str(export_dir / "model.onnx")), names)
    assert list(mapping) == names
    # Found from the graph alone, the fp32 graph and the fp16 one (the net wrapped in Cast nodes: scopes
    # "net.stem", ...) name the same points; features are the classifier's input.
    assert list(block_values(onnx.load(str(export_dir / "model.onnx")))) == names
    fp16 = block_values(onnx.load(str(export_dir / "model.fp16.onnx")))
    assert list(fp16) == names and fp16["stem"]["scope"] == "net.stem" and fp16[FEATURES]["scope"] == "net.fc"
    assert mapping["blocks.0"]["ops"].get("Conv", 0) >= 2 and mapping["stem"]["ops"] == {"Conv": 1}
    assert len({m["value"] for m in mapping.values()}) == len(names)


@pytest.mark.parametrize("where", ["stem", "middle", "last"])
def test_planted_defect_is_localised(export_dir, tmp_path, where):
    source = load_export_source(export_dir)
    blocks = [p for p, _ in block_points(source.folded()) if p.startswith("blocks.")]
    point = {"stem": "stem", "middle": blocks[len(blocks) // 2], "last": blocks[-1]}[where]
    bad = tmp_path / "model.onnx"
    target = plant_conv_defect(export_dir / "model.onnx", bad, point, 1 + DEFECT)
    assert target.startswith(point + ".")
    backend = OrtBackend(BackendSpec("onnxruntime", "cpu", "fp32"), source.input_shape, bad)
    ref_backend = next(b for b in export_backends(source, tensorrt=False) if b.name == REFERENCE)
    data = load_parity_data(source, max_samples=32)
    x, y = data.x, data.y
    with ref_backend:
        ref = run_batched(ref_backend, x)
    with backend:
        out = run_batched(backend, x)
    tol = judged_tolerance("fp32", None)
    assert judge(out, ref, "fp32", y, tol)["status"] == "FAIL"
    rep = per_block_report(source, x, [backend], ref_backend, {backend.name: tol}, log=quiet)
    div = rep["backends"][backend.name]["first_diverging"]
    assert div["point"] == point, (target, div)
    assert div["onnx_ops"].get("Conv", 0) >= 1


def test_a_defect_in_the_head_alone_is_named_as_the_head(export_dir, tmp_path):
    """Only the classifier's weights of one class change: every block point and the features are within the
    tolerance, the logits are not (FAIL); per-block concludes that the divergence lies after `features`, in the
    head, in the row and in the Markdown, with the head's ONNX ops."""
    import onnx
    from onnx import numpy_helper

    source = load_export_source(export_dir)
    model = onnx.load(str(export_dir / "model.onnx"))
    scope = block_values(model, [FEATURES])[FEATURES]["scope"]  # the classifier's scope
    (gemm,) = [n for n in model.graph.node if n.op_type == "Gemm" and scope in node_scopes(n)]
    assert next(a.i for a in gemm.attribute if a.name == "transB") == 1  # weight rows are classes
    init = next(i for i in model.graph.initializer if i.name == gemm.input[1])
    w = numpy_helper.to_array(init).copy()
    w[3] *= np.float32(1 + HEAD_DEFECT)
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(model, str(tmp_path / "head.onnx"))
    backend = OrtBackend(BackendSpec("onnxruntime", "cpu", "fp32"), source.input_shape, tmp_path / "head.onnx")
    ref_backend = next(b for b in export_backends(source, tensorrt=False) if b.name == REFERENCE)
    data = load_parity_data(source, max_samples=32)
    x, y = data.x, data.y
    with ref_backend:
        ref = run_batched(ref_backend, x)
    with backend:
        out = run_batched(backend, x)
    tol = judged_tolerance("fp32", None)
    judged = judge(out, ref, "fp32", y, tol)
    assert judged["status"] == "FAIL" and judged["rel_l2"] > 10 * tol["rel_l2"], judged
    rep = per_block_report(source, x, [backend], ref_backend, {backend.name: tol}, log=quiet)
    row = rep["backends"][backend.name]
    assert all(p["rel_l2"] <= tol["rel_l2"] for p in row["points"]) and row["points"][-1]["point"] == FEATURES
    assert row["logits"]["rel_l2"] > 10 * tol["rel_l2"]
    div = row["first_diverging"]
    assert div["point"] == HEAD and div["depth"] == len(row["points"]) and div["onnx_ops"] == {"Gemm": 1}
    assert row["conclusion"].startswith("diverges after `features`: in the head (classifier)")
    assert "**Diverges after `features`: in the head (classifier)**" in per_block_markdown(rep)


def test_compare_thread_counts_and_refusals(export_dir, tmp_path, cli):
    for t in (1, 2):
        options = ParityOptions(
            only=["onnxruntime-cpu-fp32", "torch-cpu-fp32-folded"],
            max_samples=64,
            invariance_samples=8,
            save_outputs=True,
            threads=t,
        )
        parity_report(export_dir, tmp_path / f"t{t}", options, log=quiet)
    options = ParityOptions(only=["onnxruntime-cpu-fp32"], max_samples=32, invariance_samples=8, save_outputs=True)
    parity_report(export_dir, tmp_path / "fewer", options, log=quiet)
    rep = compare_saved_runs(tmp_path / "t1", tmp_path / "t2", tmp_path / "cmp")
    same = {r["backend"]: r for r in rep["same_backend"]}
    assert set(same) == {REFERENCE, "onnxruntime-cpu-fp32", "torch-cpu-fp32-folded"}
    for r in same.values():
        assert r["top1_agreement"] == 1.0 and r["rel_l2"] <= 1e-5
    assert same[REFERENCE]["bitwise_share"] == 1.0 or same[REFERENCE]["rel_l2"] <= 1e-12
    assert rep["machine_a"]["threads_requested"] == 1 and rep["machine_b"]["threads_requested"] == 2
    assert (tmp_path / "cmp" / "compare.md").is_file() and rep["cross_backend"]
    with pytest.raises(SavedRunError, match="different inputs"):
        compare_saved_runs(tmp_path / "t1", tmp_path / "fewer")
    r = cli("compare", str(tmp_path / "t1"), str(tmp_path / "fewer"))
    assert r.returncode == 2 and "different inputs" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    shutil.copytree(tmp_path / "t1", tmp_path / "other-model")
    prov = tmp_path / "other-model" / PROVENANCE_FILE
    changed = prov.read_text().replace('"weights_sha256": "', '"weights_sha256": "0')
    assert changed != prov.read_text()
    prov.write_text(changed)
    with pytest.raises(SavedRunError, match="different models"):
        compare_saved_runs(tmp_path / "t1", tmp_path / "other-model")


def test_per_block_holds_one_onnx_session_at_a_time(export_dir, monkeypatch):
    """Per-block capture on ONNX Runtime runs an instrumented copy of the graph in place of the backend's
    own session: live sessions (counted on the real OrtBackend class) never exceed one."""
    live, peak = [0], [0]
    activate, deactivate = OrtBackend._activate, OrtBackend._deactivate

    def counted_activate(self):
        activate(self)
        live[0] += 1
        peak[0] = max(peak[0], live[0])

    def counted_deactivate(self):
        if self.session is not None:
            live[0] -= 1
        deactivate(self)

    monkeypatch.setattr(OrtBackend, "_activate", counted_activate)
    monkeypatch.setattr(OrtBackend, "_deactivate", counted_deactivate)
    source = load_export_source(export_dir)
    backends = export_backends(source, tensorrt=False)
    ref_backend = next(b for b in backends if b.name == REFERENCE)
    ort = next(b for b in backends if b.name == "onnxruntime-cpu-fp32")
    x = load_parity_data(source, max_samples=8).x
    rep = per_block_report(source, x, [ort], ref_backend, {ort.name: judged_tolerance("fp32", None)}, log=quiet)
    assert rep["backends"][ort.name]["status"] == "ok"
    assert peak[0] == 1 and live[0] == 0
    with ort, pytest.raises(RuntimeError, match="one session on the device at a time"):
        onnx_points(ort, x, rep["points"])


def test_batch_matrix_measures_what_it_claims():
    """Against run functions whose batch dependence is known: per sample (invariant), and one that adds
    each batch's mean (like BatchNorm in training mode); columns above max_batch are skipped, not run."""
    x = np.random.default_rng(0).standard_normal((10, 1, 4, 4)).astype(np.float32)
    seen = []

    def per_sample(b):
        seen.append(len(b))
        return (b.reshape(len(b), -1)[:, :5] * 3).astype(np.float32)

    def batch_mean(b):
        flat = b.reshape(len(b), -1)[:, :5]
        return (flat + flat.mean(0)).astype(np.float32)

    m = batch_invariance_matrix(per_sample, x, torch.float32, (3, 8, 16), max_batch=8)
    assert m["3"] == {"bitwise_share": 1.0, "max_ulp": 0.0, "max_rel_l2": 0.0} and m["8"]["bitwise_share"] == 1.0
    assert m["16"] == {"skipped": profile_reason(8)} and profile_reason(8) == "outside the engine profile (max 8)"
    assert max(seen) == 8 and seen.count(1) == len(x)
    m = batch_invariance_matrix(batch_mean, x, torch.float32, (3, 8))
    for v in m.values():
        assert v["bitwise_share"] == 0.0 and v["max_rel_l2"] > 1e-2 and v["max_ulp"] > 1e3


def _fake_manifest() -> Manifest:
    return Manifest(
        model="m",
        norm="nf",
        input=InputSpec(shape=["batch", 1, 2, 2]),
        source=ModelSource(kind="test", weights_sha256="w"),
        onnx={"fp32": OnnxEntry(file="model.onnx", sha256="o")},
    )


def test_saved_outputs_keep_float64_and_compare_in_float64(tmp_path):
    """A float64 reference survives outputs.npz as float64, and compare measures it in float64 ULPs: two
    references one float64 step apart are 1 ULP apart, not identical after rounding to float32."""
    x = np.zeros((4, 1, 2, 2), np.float32)
    ref = np.random.default_rng(0).standard_normal((4, 3))
    nudged = ref.copy()
    nudged[0, 0] = np.nextafter(ref[0, 0], np.inf)
    assert np.float32(nudged[0, 0]) == np.float32(ref[0, 0])  # invisible in float32
    described = {"ref": {"precision": "fp64"}}
    save_outputs(tmp_path / "a", _fake_manifest(), x, None, {"ref": ref}, described, None)
    save_outputs(tmp_path / "b", _fake_manifest(), x, None, {"ref": nudged}, described, None)
    with np.load(tmp_path / "a" / OUTPUTS_FILE) as z:
        assert z["out:ref"].dtype == np.float64 and np.array_equal(z["out:ref"], ref)
    same = compare_saved_runs(tmp_path / "a", tmp_path / "b")["same_backend"][0]
    assert same["max_ulp"] == 1.0 and same["bitwise_share"] == 0.75 and 0 < same["rel_l2"] < 1e-15


@pytest.mark.parametrize("damage", ["truncated npz", "missing keys", "wrong format", "not an object"])
def test_compare_damaged_saved_run_is_one_line(tmp_path, cli, damage):
    x = np.zeros((4, 1, 2, 2), np.float32)
    outs = {"ref": np.random.default_rng(0).standard_normal((4, 3))}
    for d in ("a", "b"):
        save_outputs(tmp_path / d, _fake_manifest(), x, None, outs, {"ref": {"precision": "fp64"}}, None)
    npz, prov_path = tmp_path / "b" / OUTPUTS_FILE, tmp_path / "b" / PROVENANCE_FILE
    prov = json.loads(prov_path.read_text())
    if damage == "truncated npz":
        npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
        want = "unreadable"
    elif damage == "missing keys":
        del prov["inputs_sha256"], prov["machine"]
        prov_path.write_text(json.dumps(prov))
        want = "lacks inputs_sha256, machine"
    elif damage == "wrong format":
        prov["format"] = "nfdeploy-parity-outputs-v0"
        prov_path.write_text(json.dumps(prov))
        want = "format 'nfdeploy-parity-outputs-v0'"
    else:
        prov_path.write_text("[1, 2]")
        want = "not a JSON object"
    with pytest.raises(SavedRunError, match=want):
        compare_saved_runs(tmp_path / "a", tmp_path / "b")
    if damage != "truncated npz":
        return  # the command line once: a subprocess costs seconds
    r = cli("compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "cmp"))
    assert r.returncode == 2 and want in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "cmp").exists()
