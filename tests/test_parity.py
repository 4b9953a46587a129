"""Parity reports: every runnable backend vs the float64 unfolded model on the digits test set,
batch invariance (NF vs the BN twin in training mode), pairwise comparisons, CLI exit codes."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from nfdeploy.config import load_recipe
from nfdeploy.export import ExportOptions, export_run
from nfdeploy.metrics import judge
from nfdeploy.parity import parity_report
from nfdeploy.precision import PRECISIONS
from nfdeploy.train import train

quiet = lambda *a, **k: None  # noqa: E731
INVARIANCE_REL_TOL = 1e-6  # NF outputs must not depend on the batch beyond float32 rounding


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("parity")
    run = train(load_recipe("nf_digits", {"train.epochs": 8, "train.threads": 2}), d / "run", progress=False, log=quiet)
    export_run(run.run_dir, d / "export", ExportOptions(precisions=("fp32", "fp16", "bf16")), log=quiet)
    return d / "export"


@pytest.fixture(scope="module")
def report(export_dir) -> dict:
    return parity_report(export_dir, export_dir.parent / "reports", log=quiet, invariance_samples=32)


def test_every_cpu_backend_within_tolerance(report):
    rows = {r["name"]: r for r in report["backends"]}
    for name in ("torch-cpu-fp64-unfolded", "torch-cpu-fp32-unfolded", "torch-cpu-fp32-folded",
                 "onnxruntime-cpu-fp32", "onnxruntime-cpu-fp16"):
        assert rows[name]["status"] == "pass", rows[name]
    for name in ("torch-cpu-fp32-unfolded", "torch-cpu-fp32-folded", "onnxruntime-cpu-fp32", "onnxruntime-cpu-fp16"):
        tol = PRECISIONS[rows[name]["precision"]]
        assert rows[name]["rel_l2"] <= tol.rel_l2 and rows[name]["top1_agreement"] >= tol.top1_agreement
    assert {rows[n]["precision"] for n in ("onnxruntime-cpu-fp32", "onnxruntime-cpu-fp16")} == {"fp32", "fp16"}
    assert report["ok"] and report["data"] == "digits test split (360 images)"
    assert rows["torch-cpu-fp32-folded"]["accuracy"] > 0.5 and abs(rows["torch-cpu-fp32-folded"]["accuracy_delta"]) < 1e-12


def test_unrunnable_backends_are_listed_with_reasons(report):
    import torch

    rows = {r["name"]: r for r in report["backends"]}
    assert rows["onnxruntime-cpu-bf16"]["status"] == "skipped" and "Conv" in rows["onnxruntime-cpu-bf16"]["reason"]
    if not torch.cuda.is_available():
        for name in ("torch-cuda-fp32-folded-eager", "torch-cuda-fp32-tf32-folded-cudagraph", "onnxruntime-cuda-fp32",
                     "onnxruntime-cuda-fp32-tf32"):
            assert rows[name]["status"] == "skipped" and rows[name]["reason"]
    assert not any(n.startswith("tensorrt") for n in rows)  # this export has no engines: no engine rows


def test_every_backend_name_is_unique_and_tf32_is_judged_as_tf32(report):
    names = [r["name"] for r in report["backends"]]
    assert len(names) == len(set(names))
    rows = {r["name"]: r for r in report["backends"]}
    assert rows["onnxruntime-cuda-fp32-tf32"]["precision"] == "tf32"
    assert rows["onnxruntime-cuda-fp32"]["precision"] == "fp32"
    assert rows["torch-cuda-fp32-tf32-folded-eager"]["math_mode"] == "tf32 conv/matmul"


def test_batch_invariance_nf_vs_bn_twin(report):
    inv = report["batch_invariance"]
    assert set(inv) >= {"torch-cpu-fp32-folded", "onnxruntime-cpu-fp32"}
    for name, r in inv.items():
        assert r["bitwise_identical"] or r["relative_to_max_output"] <= INVARIANCE_REL_TOL, (name, r)
    c = report["bn_twin_contrast"]
    assert c["train"]["relative_to_max_output"] > 1e-3  # batch statistics: the output depends on the batch
    assert c["eval"]["bitwise_identical"] or c["eval"]["relative_to_max_output"] <= INVARIANCE_REL_TOL


def test_pairwise_and_files(report, export_dir):
    ran = [r for r in report["backends"] if r.get("status") == "pass" and r["name"] != "torch-cpu-fp64-unfolded"]
    assert len(report["pairwise"]) == len(ran) * (len(ran) - 1) // 2
    fp32_pair = next(p for p in report["pairwise"] if {p["a"], p["b"]} == {"torch-cpu-fp32-folded", "onnxruntime-cpu-fp32"})
    assert fp32_pair["rel_l2"] <= 1e-5 and fp32_pair["top1_agreement"] == 1.0
    out = export_dir.parent / "reports"
    assert json.loads((out / "parity.json").read_text())["ok"] is True
    assert "Batch invariance" in (out / "parity.md").read_text()
    assert (out / "parity.png").read_bytes()[:4] == b"\x89PNG"


def test_judge_flags_out_of_tolerance_and_non_finite_outputs():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((64, 10))
    noisy = ref + 1e-3 * rng.standard_normal(ref.shape)  # rel L2 ~1e-3: outside fp32's tolerance, inside fp16's
    assert judge(noisy.astype(np.float32), ref, "fp32")["status"] == "FAIL"
    assert judge(noisy.astype(np.float32), ref, "fp16")["status"] == "pass"
    flipped = ref.copy()
    flipped[0] = -flipped[0]  # one sample's arg-max moves: agreement 63/64 < fp32's 100%
    row = judge(flipped, ref, "fp32")
    assert row["status"] == "FAIL" and "top-1 agreement" in row["reason"]
    bad = ref.copy()
    bad[3, 2] = np.nan
    row = judge(bad, ref, "fp16", tolerance={"rel_l2": float("inf"), "top1_agreement": 0.0})
    assert row["status"] == "FAIL" and row["nonfinite"] == 1 and "non-finite" in row["reason"]


def test_cli_parity_and_bad_inputs(export_dir, tmp_path):
    ok = run_cli("parity", str(export_dir), "--only", "onnxruntime-cpu-fp32")
    assert ok.returncode == 0, ok.stderr[-2000:]
    default_dir = export_dir.parent / f"{export_dir.name}-reports"  # beside the export dir, not inside it
    rep = json.loads((default_dir / "parity.json").read_text())
    assert [r["name"] for r in rep["backends"]] == ["torch-cpu-fp64-unfolded", "onnxruntime-cpu-fp32"]
    assert not (export_dir / "reports").exists()
    before = (default_dir / "parity.md").read_text()
    none = run_cli("parity", str(export_dir), "--only", "no-such-backend")
    assert none.returncode == 2 and "matches no backend" in none.stderr and len(none.stderr.strip().splitlines()) == 1
    assert (default_dir / "parity.md").read_text() == before  # the failed call wrote nothing
    wrong = run_cli("parity", str(export_dir), "--out", str(tmp_path / "w"), "--dataset", "synthetic")
    assert wrong.returncode == 2 and wrong.stderr.startswith("error: ") and "channels" in wrong.stderr
    tampered = tmp_path / "tampered"
    shutil.copytree(export_dir, tampered)
    with open(tampered / "model.onnx", "ab") as f:
        f.write(b"\0")
    bad = run_cli("parity", str(tampered))
    assert bad.returncode == 2 and "does not match its manifest" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_accuracy_is_not_applicable_when_labels_are_not_the_models_classes(export_dir):
    from nfdeploy.backends import load_export_source
    from nfdeploy.parity import load_parity_data

    source = load_export_source(export_dir)
    x, y, _, why = load_parity_data(source, max_samples=16)
    assert y is not None and why is None and len(y) == len(x) == 16
    source.manifest["input"]["class_names"] = [f"imagenet class {i}" for i in range(10)]  # a model of other classes
    x, y, _, why = load_parity_data(source, max_samples=16)
    assert y is None and "not applicable" in why and len(x) == 16
