"""Latency report: real timing on CPU with tiny settings (structure, not speed: targets live in bench/)."""

import json

import pytest
import torch

from nfdeploy.config import load_recipe
from nfdeploy.export import ExportOptions, export_run
from nfdeploy.perf import BenchOptions, bench_report, time_backend
from nfdeploy.train import train

quiet = lambda *a, **k: None  # noqa: E731
BATCHES = (1, 4)
STATS = ("min", "median", "p90", "p99", "mean")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    run = train(
        load_recipe("nf_digits", {"train.epochs": 1, "train.threads": 2}), root / "run", progress=False, log=quiet
    ).run_dir
    export_run(run, root / "export", ExportOptions(precisions=("fp32", "fp16")), log=quiet)
    out = root / "bench"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one OpenMP thread: robust against a busy 2-core machine (numbers are not checked)
    try:
        rep = bench_report(
            root / "export", out, BenchOptions(batches=BATCHES, min_time=0.2, warmup=0.1), log=quiet
        ).to_dict()
    finally:
        torch.set_num_threads(threads)
    return out, rep


def test_files_written(report):
    out, rep = report
    assert {p.name for p in out.iterdir()} == {
        "bench.json",
        "bench.md",
        "latency_vs_batch.png",
        "throughput_vs_batch.png",
    }
    for png in ("latency_vs_batch.png", "throughput_vs_batch.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "bench.json").read_text()) == json.loads(json.dumps(rep))
    md = (out / "bench.md").read_text()
    for text in (
        "## Machine",
        "## Timing method",
        "host wall time",
        "CUDA events",
        "folded speedup",
        "NF/BN folded",
        "### Skipped",
        "onnxruntime",
    ):
        assert text in md


def test_rows_and_stats(report):
    _, rep = report
    names = {r["name"] for r in rep["results"]}
    assert {
        "torch-cpu-fp64-unfolded",
        "torch-cpu-fp32-unfolded",
        "torch-cpu-fp32-folded",
        "onnxruntime-cpu-fp32",
        "onnxruntime-cpu-fp16",
    } <= names
    for r in rep["results"] + rep["comparison"]["results"]:
        assert r["device"] == "cpu" and r["device_ms"] is None and r["primary"] == "host_ms"
        assert r["batch"] in BATCHES and r["input_shape"] == [1, 32, 32]
        s = r["host_ms"]
        assert all(k in s for k in STATS)
        assert 0 < s["min"] <= s["median"] <= s["p99"] and s["median"] <= s["p90"] <= s["p99"]
        assert s["min"] <= r["median_ms"] <= s["max"] and r["rounds"] >= 1 and r["cv"] >= 0
        lo, hi = r["median_ci95_ms"]
        assert lo <= r["median_ms"] <= hi
        assert r["throughput_ips"] > 0 and r["backend"]["name"] == r["name"]
        assert r["iterations"] >= 10 and not r["truncated"]
        assert r["timed_s"] >= 0.2 or r["stopped_by"] != "settled"  # min time is met by every settled row
        assert (r["memory_mb"] is None or r["memory_mb"] >= 0) and "RSS" in r["memory_kind"]
        assert r["gflops"] > 0 and isinstance(r["noisy"], bool)
        assert isinstance(r["threads"], int) and r["threads"] >= 1
        assert "host wall time" in r["timing"]["host_ms"] and r["timing"]["device_ms"] is None
    assert {(r["name"], r["batch"]) for r in rep["results"]} == {(n, b) for n in names for b in BATCHES}
    assert not rep["failed"] and not rep["over_budget"]
    m = rep["machine"]
    assert m["cpu"]["model"] and m["torch_threads"] >= 1 and m["gpu"] is None
    assert "torch" in m["versions"] and "onnxruntime" in m["versions"]


def test_skipped_backends_have_reasons(report):
    _, rep = report
    skipped = {s["name"]: s["reason"] for s in rep["skipped"]}
    assert skipped["torch-cuda-fp32-folded-eager"] == "no CUDA device visible to torch"
    assert "CUDAExecutionProvider" in skipped["onnxruntime-cuda-fp32"]
    assert "CUDAExecutionProvider" in skipped["onnxruntime-cuda-fp32-tf32"]
    assert not any(n.startswith("tensorrt") for n in skipped)  # no engines in this export: no engine rows
    assert all(reason for reason in skipped.values())
    comp_skipped = {s["name"]: s["reason"] for s in rep["comparison"]["skipped"]}
    assert "CUDA" in comp_skipped["torch-cuda-fp32-nf-unfolded"]
    assert "CUDA" in comp_skipped["onnxruntime-cuda-fp32-bn-folded"]


def test_comparison_has_both_ratios(report):
    _, rep = report
    rows = {(r["backend_type"], r["batch"]): r for r in rep["comparison"]["rows"]}
    for group in ("torch-cpu-fp32", "onnxruntime-cpu-fp32"):
        for b in BATCHES:
            r = rows[(group, b)]
            assert r["model"] == "nf"
            assert r["speedup_folded_vs_unfolded"] > 0 and r["ratio_nf_folded_to_bn_folded"] > 0
            # one measurement feeds every table: the ratio row shows the comparison's own medians
            medians = {
                x["variant"]: x["median_ms"]
                for x in rep["comparison"]["results"]
                if x["group"] == group and x["batch"] == b
            }
            assert (r["unfolded_ms"], r["nf_folded_ms"], r["bn_folded_ms"]) == (
                medians["nf-unfolded"],
                medians["nf-folded"],
                medians["bn-folded"],
            )
    variants = {(r["group"], r["variant"]) for r in rep["comparison"]["results"]}
    assert ("onnxruntime-cpu-fp32", "bn-folded") in variants and ("torch-cpu-fp32", "nf-unfolded") in variants


def test_result_reads_back_its_json_and_the_format_before(report):
    """bench.json read back as a BenchResult gives the same JSON; a file of the format before (v2: no status word
    on rows that were not timed; a failed row's stage says which failure) reads with the status each row means."""
    from nfdeploy.perf import BenchError, BenchResult
    from nfdeploy.status import Status

    out, rep = report
    saved = json.loads(json.dumps(rep))
    res = BenchResult.read(out)
    assert res.to_dict() == saved and res.format == "nfdeploy-bench-v3"
    assert res.skipped and all(s.status is Status.SKIPPED for s in res.skipped + res.comparison.skipped)
    old = json.loads(json.dumps(rep))
    old["format"] = "nfdeploy-bench-v2"
    for row in old["skipped"] + old["comparison"]["skipped"]:
        row.pop("status")
    old["failed"] = [
        {"name": "a", "stage": "failed to load", "reason": "engine file is garbage"},
        {"name": "b", "batch": 4, "stage": "crashed while timing", "reason": "illegal memory access"},
        {"name": "c", "status": "failed", "reason": "a GPU-suite step's word"},
    ]
    res = BenchResult.from_dict(old)
    assert [f.status for f in res.failed] == [Status.BROKEN, Status.CRASHED, Status.CRASHED]
    assert [s.name for s in res.skipped] == [s["name"] for s in rep["skipped"]]
    assert all(s.status is Status.SKIPPED for s in res.skipped + res.comparison.skipped)
    assert res.to_dict()["failed"][0] == {**old["failed"][0], "status": "broken"}
    with pytest.raises(BenchError, match="format"):
        BenchResult.from_dict({**saved, "format": "nfdeploy-bench-v9"})


def test_torch_flop_count_matches_the_onnx_mac_count(report):
    """The two counts of one model's arithmetic agree: torch.utils.flop_counter on the folded module and
    the Conv/Gemm/MatMul MACs of the exported fp32 graph."""
    from nfdeploy.check.backends import load_export_source
    from nfdeploy.perf.flops import onnx_macs, torch_macs

    _, rep = report
    source = load_export_source(rep["export_dir"])
    graph = onnx_macs(source.export_dir / source.manifest.onnx["fp32"].file)
    assert graph > 0 and torch_macs(source.folded(), source.input_shape) == graph
    assert torch_macs(source.model, source.input_shape) == graph  # unfolded: the same convolutions
    assert rep["work"]["macs_per_sample"] == graph


def test_time_backend_stops_at_its_caps():
    from nfdeploy.runtime.base import BackendSpec
    from nfdeploy.runtime.torch_backend import TorchBackend

    conv = torch.nn.Conv2d(3, 4, 3)
    b = TorchBackend(BackendSpec("torch", "cpu", "fp32", "folded"), (3, 8, 8), lambda: conv).activate()
    r = time_backend(b, 2, (3, 8, 8), warmup_s=0.0, min_time_s=10.0, min_iters=5, max_iters=7)
    assert r["stopped_by"] == "max iterations" and r["iterations"] < 10**3 and r["warmup_iterations"] == 1
    r = time_backend(b, 2, (3, 8, 8), warmup_s=0.0, min_time_s=10.0, min_iters=10**6, max_time_s=0.05)
    assert r["stopped_by"] == "time cap" and not r["settled"] and r["timed_s"] < 5


def test_time_backend_cuda_path_with_fake_events(monkeypatch):
    """The CUDA branch (events, device_ms as the primary metric, torch allocator peak), without a GPU."""
    import numpy as np

    from nfdeploy.runtime.base import Backend, BackendSpec

    class FakeEvent:
        def __init__(self, enable_timing=False):
            assert enable_timing

        def record(self, stream=None):
            pass

        def synchronize(self):
            pass

        def elapsed_time(self, other):
            return 1.5

    class FakeOrt(Backend):
        copies_in_run = True

        def _activate(self):
            pass

        def _deactivate(self):
            pass

        def _run(self, batch):
            return np.zeros((len(batch), 10), np.float32)

    c = torch.cuda
    for attr, value in {
        "is_available": lambda: True,
        "current_stream": lambda: object(),
        "Event": FakeEvent,
        "synchronize": lambda: None,
        "memory_allocated": lambda: 2**20,
        "reset_peak_memory_stats": lambda: None,
        "max_memory_allocated": lambda: 3 * 2**20,
    }.items():
        monkeypatch.setattr(c, attr, value)
    fake = FakeOrt(BackendSpec("onnxruntime", "cuda", "fp32"), (1, 8, 8)).activate()
    r = time_backend(fake, 4, (1, 8, 8), warmup_s=0.0, min_time_s=0.0, min_iters=5)
    # the events say 1.5 ms whatever the host clock says: device time is what the row reports
    assert r["primary"] == "device_ms" and r["device_ms"]["median"] == 1.5 and r["median_ms"] == 1.5
    assert r["settled"] and r["cv"] == 0.0 and r["host_ms"]["median"] > 0
    assert r["scope"] == "run() incl. copies" and "copies" in r["timing"]["device_ms"]
    # ONNX Runtime / TensorRT allocate outside torch's allocator: nothing measured is None, not torch's ~0 MiB
    assert r["memory_mb"] is None and r["memory_kind"].startswith("not measured") and r["warmup_iterations"] == 2
