"""The library pieces the bench studies call: their inputs (photo tiles, a randomised graph), the int8 GEMM
ceiling, ONNX Runtime's profiler and thread limit, and the CPU's flags."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nfdeploy import machine
from nfdeploy.export.onnx_graph import run_with_values
from nfdeploy.export.study_inputs import IMAGENET_MEAN, IMAGENET_STD, export_randomised, photo_tiles
from nfdeploy.fold import randomize_
from nfdeploy.machine import cpu_flags
from nfdeploy.metrics import compare_outputs, top1_agreement
from nfdeploy.models import create_model
from nfdeploy.perf.gemm_ceiling import int8_gemm_ceiling
from nfdeploy.perf.rounds import RoundPlan
from nfdeploy.runtime.base import BackendSpec
from nfdeploy.runtime.ort import OrtBackend, ort_threads_limited

SPEC = BackendSpec("onnxruntime", "cpu", "fp32")
SHAPE = (3, 32, 32)


@pytest.fixture(scope="module")
def graph(tmp_path_factory) -> Path:
    return export_randomised("nf_resnet_c8", tmp_path_factory.mktemp("graph") / "nf_resnet_c8.onnx", size=32)


def test_photo_tiles_are_normalised_half_overlapping_crops():
    from sklearn.datasets import load_sample_images

    x = photo_tiles(224)
    # 427 x 640 at a stride of 112: 2 rows x 4 columns per photo, two photos
    assert x.shape == (16, 3, 224, 224) and x.dtype == np.float32
    img = load_sample_images().images[0]
    crop = img[112:336, 112:336].astype(np.float32).transpose(2, 0, 1) / 255.0  # row 1, column 1 of the first
    want = (crop - np.array(IMAGENET_MEAN, np.float32)[:, None, None]) / np.array(IMAGENET_STD, np.float32)[
        :, None, None
    ]
    np.testing.assert_allclose(x[5], want, rtol=1e-6, atol=1e-6)
    assert photo_tiles(160).shape == (56, 3, 160, 160)  # 4 rows x 7 columns per photo


def test_randomised_graph_computes_the_randomised_model(graph):
    torch.manual_seed(0)
    model = randomize_(create_model("nf_resnet_c8").eval(), seed=0).double()
    x = np.random.default_rng(0).standard_normal((8, *SHAPE)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x).double()).numpy()
    out = run_with_values(graph, [], x)[1]
    assert compare_outputs(ref, out)["rel_l2"] < 1e-5
    assert top1_agreement(out, ref) == 1.0


def test_int8_gemm_ceiling_times_both_gemms_in_interleaved_rounds():
    plan = RoundPlan(warmup_s=0.05, min_time_s=0.1, max_time_s=2.0)
    c = int8_gemm_ceiling(1, plan, n=64)
    assert c["n"] == 64 and c["threads"] == 1
    for kind in ("fp32", "int8"):
        assert c["giga_ops_per_s"][kind] == pytest.approx(2.0 * 64**3 / (c["median_ms"][kind] * 1e6))
    r = c["fp32 / int8"]
    assert r["rounds"] == c["rounds"] >= 5 and r["ci95"][0] <= r["ratio"] <= r["ci95"][1]
    assert c["stopped_by"]


def test_ort_profiler_records_every_run(graph, tmp_path):
    x = np.zeros((2, *SHAPE), np.float32)
    with OrtBackend(SPEC, SHAPE, graph, threads=1, profile_prefix=tmp_path / "prof") as b:
        for _ in range(3):
            b.run(x)
        trace = Path(b.session.end_profiling())
    assert trace.parent == tmp_path and trace.name.startswith("prof")
    runs = [e for e in json.loads(trace.read_text()) if e.get("name") == "model_run"]
    assert len(runs) == 3
    with OrtBackend(SPEC, SHAPE, graph) as b:
        assert not b.session.get_session_options().enable_profiling


def test_ort_threads_limited_holds_every_session_to_its_threads_and_ends(graph):
    with ort_threads_limited(1):
        with OrtBackend(SPEC, SHAPE, graph, threads=2) as b:
            opts = b.session.get_session_options()
            assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (1, 1)
    with OrtBackend(SPEC, SHAPE, graph, threads=2) as b:
        assert b.session.get_session_options().intra_op_num_threads == 2


def test_cpu_flags_reads_the_first_cpu(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: sse4_1 avx2 fpu avx512f avx\n\nprocessor\t: 1\nflags\t\t: amx_tile\n")
    monkeypatch.setattr(machine, "CPUINFO", info)
    assert cpu_flags(("avx", "amx")) == ["avx", "avx2", "avx512f"]
    assert cpu_flags() == ["avx", "avx2", "avx512f", "fpu", "sse4_1"]
    monkeypatch.setattr(machine, "CPUINFO", tmp_path / "absent")
    assert cpu_flags() == []
