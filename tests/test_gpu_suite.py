"""bench/gpu_suite.py phase 1 on a machine without a GPU: it degrades to the CPU backends, writes its packed
reports, and records every CUDA backend as skipped with its reason (never a number)."""

from __future__ import annotations

import io
import json
import sys
import tarfile

import numpy as np
import pytest
import torch
from conftest import REPO, write_recipe

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the degraded (no GPU) run")


def make_bundle(tmp_path):
    """A bundle like bench/gpu_prepare.py writes, from a one-epoch synthetic run (fast)."""
    from bench.gpu.sources import BUNDLE_EXPORT, BUNDLE_RUN
    from nfdeploy.config import load_recipe
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
def test_phase1_degrades_on_cpu(tmp_path):
    from bench import gpu_suite

    bundle = make_bundle(tmp_path)
    out, work = tmp_path / "out", tmp_path / "work"
    assert (
        gpu_suite.main(
            [
                "--bundle",
                str(bundle),
                "--out",
                str(out),
                "--work",
                str(work),
                "--phase",
                "1",
                "--tiny",
                "--deadline-s",
                "900",
                "--budget",
                "1=900",
            ]
        )
        == 0
    )
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
