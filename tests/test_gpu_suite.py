"""The GPU suite's phase 1 on a machine without a GPU, run as users run it (`python -m bench.gpu_suite` from the
repository root): it degrades to the CPU backends, writes its packed reports, and records every CUDA backend as
skipped with its reason (never a number)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch
from conftest import REPO, write_recipe

degraded = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the degraded (no GPU) run")


def make_bundle(tmp_path):
    """A bundle like `python -m bench.gpu_prepare` writes, from a one-epoch synthetic run (fast)."""
    from nfdeploy.config import load_recipe
    from nfdeploy.evidence.bundle import BUNDLE_EXPORT, BUNDLE_RUN
    from nfdeploy.export import OnnxOverrides, export_options, export_run
    from nfdeploy.train import train

    bundle = tmp_path / "bundle"
    recipe = load_recipe(str(write_recipe(tmp_path / "r.toml", data={"synthetic_size": 64, "num_classes": 4})))
    train(recipe, bundle / BUNDLE_RUN, progress=False, log=lambda m: None)
    export_run(
        bundle / BUNDLE_RUN,
        bundle / BUNDLE_EXPORT,
        export_options("default", OnnxOverrides(precisions=["fp32"], check=False)),
        log=lambda m: None,
    )
    return bundle


@pytest.mark.slow
@degraded
def test_phase1_degrades_on_cpu(tmp_path):
    bundle = make_bundle(tmp_path)
    out, work = tmp_path / "out", tmp_path / "work"
    args = ["--bundle", bundle, "--out", out, "--work", work, "--phase", "1", "--tiny"]
    args += ["--deadline-s", "900", "--budget", "1=900"]
    r = subprocess.run(
        [sys.executable, "-m", "bench.gpu_suite", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    # What comes back from the device machine: few files, none deeper than $OUT/a/b/file.
    names = sorted(p.name for p in out.iterdir())
    assert names == ["phase1.tar.gz", "suite.log", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())["phase1"]
    steps = {s["name"]: s for s in summary["steps"]}
    assert steps["parity nf_digits (carried export)"]["status"] == "ok", steps
    # nf_resnet50 (64² here) may run out of its time limit on a loaded machine: then it says so, with no numbers.
    r50 = next(s for s in summary["steps"] if s["name"].startswith("parity nf_resnet50"))
    assert r50["status"] == "ok" or (r50["status"] == "timeout" and "time limit" in r50["reason"]), r50
    if r50["status"] == "ok":
        assert summary["results"]["parity nf_resnet50"]["ok"], summary["results"]["parity nf_resnet50"]
    skipped = {s["what"]: s["reason"] for s in summary["skipped"]}
    assert "no CUDA device" in skipped["torch CUDA backends (all precisions and modes)"]

    digits = summary["results"]["parity nf_digits"]
    rows = {r["name"]: r for r in digits["backends"]}
    cuda_rows = [r for n, r in rows.items() if n.startswith("torch-cuda")]
    assert cuda_rows and all(r["status"] == "skipped" and "CUDA" in r["reason"] for r in cuda_rows)
    assert all("rel_l2" not in r for r in cuda_rows)  # no number for a backend that did not run
    assert rows["torch-cpu-fp32-folded"]["status"] == "pass"
    assert rows["onnxruntime-cpu-fp32"]["status"] == "pass"

    with tarfile.open(out / "phase1.tar.gz") as tar:
        members = set(tar.getnames())
        assert {"phase1.json", "phase1.md", "parity-nf_digits/parity.json", "invariance-nf_digits.json"} <= members
        saved = [m for m in members if m.startswith("parity-nf_digits/") and m.endswith(".npz")]
        assert saved, members
        npz = np.load(io.BytesIO(tar.extractfile(saved[0]).read()))
        inv = json.loads(tar.extractfile("invariance-nf_digits.json").read())
    # The saved outputs are the logits of the backends that ran, on the inputs whose digest is recorded
    # (outputs.npz holds "inputs", "labels" and "out:<backend>").
    from nfdeploy.artifacts import array_sha256

    assert {"inputs", "labels", "out:onnxruntime-cpu-fp32", "out:torch-cpu-fp32-folded"} <= set(npz.files), npz.files
    assert array_sha256(npz["inputs"]) == digits["inputs_sha256"]
    assert list(npz["inputs"].shape) == digits["inputs_shape"]
    assert npz["out:onnxruntime-cpu-fp32"].shape == (len(npz["inputs"]), 4)
    assert not any(k.startswith("out:torch-cuda") for k in npz.files)  # nothing saved for a backend that did not run
    # parity's matrix protocol: the NF rows from parity, the BN twin's beside them, every cell a measurement
    twin = [k for k in inv if k.startswith("BN twin folded (eval) ")]
    assert twin and all(k.removeprefix("BN twin folded (eval) ").startswith("torch-cpu-fp32-bn-folded") for k in twin)
    assert "onnxruntime-cpu-fp32" in inv and "bn twin torch-cpu-fp32 (train mode)" in inv
    assert all(
        np.isfinite(c["max_rel_l2"]) and 0 <= c["bitwise_share"] <= 1 for per in inv.values() for c in per.values()
    )


def test_steps_end_in_status_words_and_old_summaries_read_back(tmp_path):
    """A step that returns is "ok", one that raises "crashed" (its traceback kept), one past its limit "timeout";
    a summary.json written with the old word "failed" reads back as "crashed" and is rewritten so."""
    import time

    from nfdeploy.evidence.steps import SUMMARY_JSON, Phase, read_summary
    from nfdeploy.status import Status

    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir()
    old = {"phase1": {"phase": 1, "steps": [{"name": "parity", "status": "failed", "reason": "boom"}]}}
    (out / SUMMARY_JSON).write_text(json.dumps(old))
    ph = Phase(2, "latency", out, work, budget_s=60, deadline=time.perf_counter() + 60, log=lambda m: None)
    assert ph.step("returns", lambda: {"x": 1}) == {"x": 1}
    ph.step("raises", lambda: 1 / 0)

    def spin():
        while True:
            pass

    ph.step("spins", spin, limit=2)
    every = read_summary(out / SUMMARY_JSON)
    assert [s["status"] for s in every["phase2"]["steps"]] == [Status.DONE, Status.CRASHED, Status.TIMEOUT]
    assert "ZeroDivisionError" in every["phase2"]["steps"][1]["reason"]
    assert (work / "phase2" / "traceback-1.txt").is_file()
    assert every["phase1"]["steps"][0]["status"] is Status.CRASHED
    on_disk = json.loads((out / SUMMARY_JSON).read_text())
    assert on_disk["phase1"]["steps"][0]["status"] == "crashed"
    assert [s["status"] for s in on_disk["phase2"]["steps"]] == ["ok", "crashed", "timeout"]
    with tarfile.open(out / "phase2.tar.gz") as tar:
        assert {"phase2.json", "phase2.md", "traceback-1.txt"} <= set(tar.getnames())


def test_fold_ratios_come_from_the_rounds_of_their_members(tmp_path):
    """Unfolded, folded and the BN twin of one backend type are timed in the same interleaved rounds: every member
    of a cell has the same number of rounds, and the folded speedup is the median of the per-round ratios of the
    members' round medians, inside its bootstrap interval."""
    from nfdeploy.check.backends import load_export_source
    from nfdeploy.evidence.fold_latency import FOLD_LATENCY_JSON, fold_groups, fold_latency
    from nfdeploy.evidence.workloads import twin_backends, write_torch_only_export
    from nfdeploy.perf.rounds import MIN_ROUNDS_BEFORE_CAP
    from nfdeploy.train.random_run import write_random_run

    run = write_random_run(tmp_path / "run", "nf_resnet_c8", input_size=32, num_classes=4)
    source = load_export_source(write_torch_only_export(run, tmp_path / "export", "a test"))
    assert source.manifest.details["note"] == "torch only, not exported: a test" and not source.manifest.onnx
    twins = twin_backends(source, ("fp32",), ("",), "cpu")
    groups = fold_groups(source, ("fp32",), ("",), "cpu", twins)
    assert {g: {v: b.name for v, b in m.items()} for g, m in groups.items()} == {
        "torch-cpu-fp32": {
            "nf-unfolded": "torch-cpu-fp32-unfolded",
            "nf-folded": "torch-cpu-fp32-folded",
            "bn-folded": "torch-cpu-fp32-bn-folded",
        }
    }
    rep = fold_latency(
        source, groups, tmp_path / "lat", (1, 4), min_time=0.05, warmup=0.02, budget_s=None, log=lambda m: None
    )
    assert not rep["failed"] and not rep["skipped"] and len(rep["ratios"]) == 2
    for ratio in rep["ratios"]:
        by = {r["variant"]: r for r in rep["results"] if r["batch"] == ratio["batch"]}
        assert set(by) == {"nf-unfolded", "nf-folded", "bn-folded"}
        assert {r["rounds"] for r in by.values()} == {ratio["rounds"]}
        assert ratio["rounds"] >= MIN_ROUNDS_BEFORE_CAP
        unf, nf, bn = (np.asarray(by[v]["round_medians_ms"]) for v in ("nf-unfolded", "nf-folded", "bn-folded"))
        assert ratio["folded_speedup"] == pytest.approx(float(np.median(unf / nf)))
        assert ratio["nf_over_bn"] == pytest.approx(float(np.median(nf / bn)))
        lo, hi = ratio["folded_speedup_ci95"]
        assert lo <= ratio["folded_speedup"] <= hi
        assert ratio["unfolded_ms"] == by["nf-unfolded"]["median_ms"]
    assert json.loads((tmp_path / "lat" / FOLD_LATENCY_JSON).read_text())["ratios"] == json.loads(
        json.dumps(rep["ratios"])
    )
