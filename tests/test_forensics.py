"""Parity forensics on a real digits run: error per block (torch hooks, instrumented ONNX on ONNX Runtime),
the first diverging block of a planted defect, the batch-invariance matrix, saved outputs compared."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from nfdeploy.backends import REFERENCE, export_backends, load_export_source
from nfdeploy.config import load_recipe
from nfdeploy.export import ExportOptions, export_run
from nfdeploy.forensics import (FEATURES, ForensicsError, block_points, capture_points, compare_saved_runs,
                                onnx_point_values, per_block_report, plant_conv_defect)
from nfdeploy.metrics import judge, ulp_error
from nfdeploy.parity import load_parity_data, parity_report
from nfdeploy.precision import REFERENCE_ERROR_FACTOR, judged_tolerance
from nfdeploy.runtime.base import BackendSpec, run_batched
from nfdeploy.runtime.ort import OrtBackend
from nfdeploy.train import train

quiet = lambda *a, **k: None  # noqa: E731
# The folded model computes the unfolded one's function; in float64 the two differ by rounding alone.
FOLD_FP64_REL = 1e-12
# A planted defect: one Conv's weights × (1 + DEFECT) inside the block under test.
DEFECT = 0.01


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
    assert names[0] == "stem" and names[-1] == FEATURES and names[1:-1] == [f"blocks.{i}" for i in range(len(names) - 2)]
    with capture_points(unfolded) as a, capture_points(folded) as b:
        unfolded(x), folded(x)
    for p in names[:-1]:  # the folded features are scaled by 1/final gain (moved into fc): see per_block_report
        ref = a[p][0]
        assert np.linalg.norm(b[p][0] - ref) <= FOLD_FP64_REL * np.linalg.norm(ref), p
    cos = np.sum(a[FEATURES][0] * b[FEATURES][0]) / np.linalg.norm(a[FEATURES][0]) / np.linalg.norm(b[FEATURES][0])
    assert abs(cos - 1) <= FOLD_FP64_REL
    source.model.float()


def test_parity_per_block_matrix_and_saved_outputs(export_dir, tmp_path):
    rep = parity_report(export_dir, tmp_path / "r", only=["cpu-fp32", "onnxruntime-cpu-fp16"], max_samples=64,
                        invariance_samples=16, per_block=True, per_block_samples=32, batch_matrix=True,
                        save_outputs=True, threads=2, log=quiet)
    assert rep["ok"], rep["failed"]
    fw = rep["framework_errors"]["fp32"]
    row = {r["name"]: r for r in rep["backends"]}["onnxruntime-cpu-fp32"]
    assert row["tolerance"]["framework_rel_l2"] == fw and row["tolerance"]["rel_l2"] == max(1e-5, 2 * fw)
    pb = rep["per_block"]["backends"]
    for name in ("torch-cpu-fp32-folded", "onnxruntime-cpu-fp32", "onnxruntime-cpu-fp16"):
        r = pb[name]
        assert r["status"] == "ok" and [p["point"] for p in r["points"]] == rep["per_block"]["points"]
        assert "first_diverging" not in r
        assert all(p["rel_l2"] <= r["tolerance_rel_l2"] and np.isfinite(p["max_ulp"]) for p in r["points"])
    # Adding graph outputs did not change what ORT computes at the logits.
    assert pb["onnxruntime-cpu-fp32"]["instrumented_logits_bitwise_equal"]
    m = rep["batch_matrix"]["backends"]
    assert set(m["onnxruntime-cpu-fp32"]) == {"1", "2", "3", "7", "8", "16", "32", "64"}
    for name in ("onnxruntime-cpu-fp32", "torch-cpu-fp32-folded"):
        assert m[name]["1"]["bitwise_share"] == 1.0
        assert all(v["max_rel_l2"] <= 1e-5 for v in m[name].values())  # NF: no batch statistics
    train_mode = m["bn twin torch-cpu-fp32 (train mode)"]
    assert train_mode["64"]["bitwise_share"] == 0.0 and train_mode["64"]["max_rel_l2"] > 1e-3  # the contrast
    for f in ("parity.md", "per_block.png", "batch_matrix.png", "outputs.npz", "provenance.json"):
        assert (tmp_path / "r" / f).is_file(), f


def test_onnx_mapping_names_every_block(export_dir):
    import onnx

    source = load_export_source(export_dir)
    names = [p for p, _ in block_points(source.folded())]
    mapping = onnx_point_values(onnx.load(str(export_dir / "model.onnx")), names)
    assert list(mapping) == names
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
    x, y, _, _ = load_parity_data(source, max_samples=32)
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


def test_compare_thread_counts_and_refusals(export_dir, tmp_path, cli):
    for t in (1, 2):
        parity_report(export_dir, tmp_path / f"t{t}", only=["onnxruntime-cpu-fp32", "torch-cpu-fp32-folded"],
                      max_samples=64, invariance_samples=8, save_outputs=True, threads=t, log=quiet)
    parity_report(export_dir, tmp_path / "fewer", only=["onnxruntime-cpu-fp32"], max_samples=32, invariance_samples=8,
                  save_outputs=True, log=quiet)
    rep = compare_saved_runs(tmp_path / "t1", tmp_path / "t2", tmp_path / "cmp")
    same = {r["backend"]: r for r in rep["same_backend"]}
    assert set(same) == {REFERENCE, "onnxruntime-cpu-fp32", "torch-cpu-fp32-folded"}
    for r in same.values():
        assert r["top1_agreement"] == 1.0 and r["rel_l2"] <= 1e-5
    assert same[REFERENCE]["bitwise_share"] == 1.0 or same[REFERENCE]["rel_l2"] <= 1e-12
    assert rep["machine_a"]["threads_requested"] == 1 and rep["machine_b"]["threads_requested"] == 2
    assert (tmp_path / "cmp" / "compare.md").is_file() and rep["cross_backend"]
    with pytest.raises(ForensicsError, match="different inputs"):
        compare_saved_runs(tmp_path / "t1", tmp_path / "fewer")
    r = cli("compare", str(tmp_path / "t1"), str(tmp_path / "fewer"))
    assert r.returncode == 2 and "different inputs" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    shutil.copytree(tmp_path / "t1", tmp_path / "other-model")
    prov = (tmp_path / "other-model" / "provenance.json")
    prov.write_text(prov.read_text().replace(rep["inputs_sha256"], rep["inputs_sha256"]).replace(
        '"weights_sha256": "', '"weights_sha256": "0'))
    with pytest.raises(ForensicsError, match="different models"):
        compare_saved_runs(tmp_path / "t1", tmp_path / "other-model")
