"""What a bench row may claim (issue 15 §2): int8 rows against an int8 peak or none, rounds sized by wall
time, at least MIN_ROUNDS_BEFORE_CAP rounds, skipped (unavailable) vs failed (failed to load, crashed while
timing), whether a torch.compile row ran compiled, and a load verdict that does not blame the bench itself."""

import time
from dataclasses import asdict

import numpy as np
import pytest
import torch
from conftest import model_manifest

from nfdeploy.check.backends import ExportSource
from nfdeploy.fold import randomize_
from nfdeploy.machine import BUSY_OTHER_CORES, judge_load, machine_load, own_processes
from nfdeploy.models import create_model
from nfdeploy.perf import BenchOptions, bench_report
from nfdeploy.perf.peak import (
    above_peak_warning,
    annotate_work,
    measure_again,
    native_cpu_bf16,
    no_peak,
    peak_for,
    peak_kind,
)
from nfdeploy.perf.rounds import MIN_ROUNDS_BEFORE_CAP, RoundPlan, interleaved_rounds
from nfdeploy.runtime.base import Backend, BackendSpec
from nfdeploy.runtime.torch_backend import TorchBackend

SHAPE = (3, 32, 32)
quiet = lambda *a, **k: None  # noqa: E731


def test_int8_rows_never_use_the_float_peak():
    """CPU int8 rows are compared with ONNX Runtime's integer matmul, measured once for both int8 forms (the
    float32 sgemm peak is never measured for them); without a peak the row's share is empty, with the reason."""
    cache: dict = {}
    for prec in ("int8", "int8-ort"):
        assert peak_kind("cpu", prec) == ("cpu", "int8") and peak_kind("cuda", prec) == ("cuda", "int8")
        p = peak_for("cpu", prec, cache)
        assert p["precision"] == "int8" and p["gflops"] > 0 and "MatMulInteger" in p["what"], p
    assert list(cache) == [("cpu", "int8")]
    row = {"batch": 8, "median_ms": 1.0, "device": "cpu", "precision": "int8-ort"}
    annotate_work(row, {"macs_per_sample": 10**9}, cache)
    assert row["gflops"] == pytest.approx(16000.0) and row["peak_share"] == pytest.approx(16000.0 / p["gflops"])
    cache[("cpu", "int8")] = no_peak("cpu", "int8", "no onnxruntime")
    annotate_work(row, {"macs_per_sample": 10**9}, cache)
    assert row["peak_share"] is None and "int8" in row["peak_note"]
    assert peak_kind("cpu", "fp16") == ("cpu", "fp32") and peak_kind("cuda", "bf16") == ("cuda", "bf16")


def test_a_share_above_the_peak_is_flagged_and_named():
    """The peak is the best of its measurements in a run (here: a real float32 matmul on this CPU, measured
    twice); a row whose achieved GFLOP/s exceed it is flagged, named in the warning and shown as ABOVE PEAK,
    never as a bare share above 100%; a row below it is not."""
    from nfdeploy.perf.markdown import peak_share_cell

    cache: dict = {}
    peak_for("cpu", "fp32", cache)
    measure_again(cache)
    best = cache[("cpu", "fp32")]
    assert len(best["measurements"]) == 2 and best["gflops"] == max(best["measurements"]) > 0
    macs, batch = 10**9, 8

    def row(name, share):  # a median latency at which the achieved GFLOP/s are `share` x the peak
        return {
            "name": name,
            "batch": batch,
            "device": "cpu",
            "precision": "fp32",
            "median_ms": 2 * macs * batch / (share * best["gflops"] * 1e9) * 1e3,
        }

    below, above = row("quiet", 0.5), row("busy-peak", 1.526)
    for r in (below, above):
        annotate_work(r, {"macs_per_sample": macs}, cache)
    assert below["above_peak"] is False and above["above_peak"] is True
    assert above["peak_share"] == pytest.approx(1.526) and above["peak_gflops"] == best["gflops"]
    warning = above_peak_warning([below, above])
    assert "busy-peak batch 8 152.6%" in warning and "quiet" not in warning
    assert above_peak_warning([below]) is None
    assert peak_share_cell(above) == "152.6% ABOVE PEAK" and peak_share_cell(below) == "50.0%"


def test_cpu_bf16_rows_have_a_bf16_peak_or_none():
    """bf16 rows on CPU are set against a bf16 matmul where the CPU has native bf16, else against no peak (with
    the reason); never against the float32 peak."""
    assert peak_kind("cpu", "bf16") == ("cpu", "bf16")
    cache: dict = {}
    p = peak_for("cpu", "bf16", cache)
    assert p["precision"] == "bf16" and "bf16" in p["what"]
    assert (p["gflops"] is not None and p["gflops"] > 0) if native_cpu_bf16() else p["gflops"] is None
    row = {"batch": 8, "median_ms": 1.0, "device": "cpu", "precision": "bf16"}
    annotate_work(row, {"macs_per_sample": 10**6}, cache)
    assert row["peak_gflops"] == p["gflops"] and list(cache) == [("cpu", "bf16")]


def test_bench_options_are_checked_once_with_one_line_errors(tmp_path):
    from nfdeploy.perf import BenchError, bench_against

    o = BenchOptions(batches="8,1,8", cpu_batches=(4,), only=["onnxruntime"])
    assert o.batches == (1, 8) and o.batches_for("cpu") == [4] and o.batches_for("cuda") == [1, 8]
    assert o.only == ("onnxruntime",) and BenchOptions().batches_for("cpu") == [1, 8, 32]
    bad = [
        ({"batches": (0, 8)}, ">= 1"),
        ({"batches": "1,x"}, "comma list"),
        ({"min_time": -1.0}, "min_time"),
        ({"max_time": 0.0}, "max_time"),
        ({"min_iters": 0}, "min_iters"),
        ({"budget_s": 0.0}, "budget_s"),
        ({"threads": 0}, "threads"),
    ]
    for kwargs, needle in bad:
        with pytest.raises(BenchError, match=needle) as e:
            BenchOptions(**kwargs)
        assert "\n" not in str(e.value)
    with pytest.raises(BenchError, match="budget_s"):  # before any export is read
        bench_against(tmp_path / "a", tmp_path / "b", None, BenchOptions(budget_s=60.0))


def test_ort_matmul_computes_the_product_it_times():
    """The timed calls are real matmuls: int8 exactly the int32 product, fp32 the float product."""
    from nfdeploy.perf.peak import ort_matmul

    (y8,) = ort_matmul("int8", n=64, threads=1)()
    rng = np.random.default_rng(0)  # ort_matmul's inputs, drawn the same way
    a, b = rng.integers(0, 256, (64, 64), dtype=np.uint8), rng.integers(-127, 128, (64, 64), dtype=np.int8)
    assert y8.dtype == np.int32 and np.array_equal(y8, a.astype(np.int32) @ b.astype(np.int32))
    (y32,) = ort_matmul("fp32", n=64, threads=1)()
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((64, 64), dtype=np.float32), rng.standard_normal((64, 64), dtype=np.float32)
    np.testing.assert_allclose(y32, a.astype(np.float64) @ b.astype(np.float64), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the int8 matmul peak needs a CUDA device")
def test_cuda_int8_peak_is_measured():
    p = peak_for("cuda", "int8", {})
    assert p["precision"] == "int8" and (p["gflops"] is None or p["gflops"] > 0), p


def test_rounds_are_sized_by_wall_time_not_device_time():
    """A call that costs 2 ms of host time but reports 0.001 ms of device time: rounds sized from the
    device figure would run ~10^4 calls (20 s) per round; sized from wall time, about 10."""

    def timer():
        time.sleep(0.002)
        return 2.0, 0.001

    t0 = time.perf_counter()
    plan = RoundPlan(warmup_s=0.0, min_time_s=0.24, min_iters=1, max_time_s=1.0, min_warmup_calls=2)
    res = interleaved_rounds({"a": timer}, plan, primary="device_ms")
    m = res["members"]["a"]
    assert m["round_iters"] <= 20 and time.perf_counter() - t0 < 10
    assert m["median_ms"] == pytest.approx(0.001)  # the reported figure is still device time
    assert m["timed_s"] >= 0.24  # min time is wall time spent


def test_time_cap_waits_for_the_minimum_rounds():
    flip = iter(range(10**6))

    def noisy():  # never settles: alternates 1 and 3 ms
        time.sleep(0.001)
        return (1.0 if next(flip) % 2 else 3.0), None

    res = interleaved_rounds({"a": noisy}, RoundPlan(warmup_s=0.0, min_time_s=0.0, min_iters=1, max_time_s=0.001))
    assert res["stopped_by"] == "time cap" and res["rounds"] >= MIN_ROUNDS_BEFORE_CAP == 5


def test_load_verdict_subtracts_the_bench_itself():
    # 2 usable CPUs, load average 2.5 while the bench ran 2 threads: the others account for 0.5, not busy.
    assert judge_load(2.5, 2, 0.0, 2) == (False, 0.5)
    assert judge_load(4.5, 2, 0.0, 2)[0]  # 2.5 left without the bench: busy
    assert judge_load(2.5, 2, 0.0, 0)[0]  # before subtracting anything the old verdict blamed others
    assert judge_load(0.1, 2, BUSY_OTHER_CORES, 1)[0]  # other processes measured busy: busy
    assert judge_load(None, 2, 0.0, 1) == (False, None)
    assert own_processes({10: 1, 11: 10, 12: 11, 13: 1}, 10) == {10, 11, 12}
    ld = machine_load(sample_s=0.05)
    assert ld["own_threads"] == torch.get_num_threads()
    assert all(p["pid"] not in own_processes({}, __import__("os").getpid()) for p in ld["busiest_other_processes"])


class _Fails(Backend):
    """A backend that is unavailable, fails to load, or crashes while timed (at its second call)."""

    def __init__(self, name: str, how: str):
        super().__init__(BackendSpec("onnxruntime", "cpu", "fp32", name), SHAPE)
        self.how, self.calls = how, 0

    def unavailable_reason(self):
        return "no such provider here" if self.how == "unavailable" else None

    def _activate(self):
        if self.how == "load":
            raise OSError("engine file is garbage")

    def _deactivate(self):
        pass

    def _run(self, batch):
        self.calls += 1
        if self.how == "run" and self.calls > 1:
            raise RuntimeError("CUDA error: an illegal memory access")
        return np.zeros((len(batch), 10), np.float32)


def test_bench_failures_are_failed_and_unavailable_is_skipped(tmp_path):
    m = randomize_(create_model("nf_resnet_c8")).eval()
    src = ExportSource(model_manifest("nf_resnet_c8", SHAPE, asdict(m.cfg)), m, tmp_path / "export")
    (tmp_path / "export").mkdir()
    compiled = TorchBackend(BackendSpec("torch", "cpu", "fp32", "folded", "compile"), SHAPE, src.folded)
    backends = [_Fails("gone", "unavailable"), _Fails("load", "load"), _Fails("run", "run"), compiled]
    threads = torch.get_num_threads()
    rep = bench_report(
        src,
        tmp_path / "out",
        BenchOptions(batches=(2, 3), min_time=0.02, warmup=0.0, min_iters=1, max_time=0.2, compare=False, threads=1),
        backends=backends,
        log=quiet,
    ).to_dict()
    assert rep["settings"]["threads"] == 1 and rep["machine_load"]["after"]["own_threads"] == 1
    assert torch.get_num_threads() == threads  # restored after the call
    assert [s["name"] for s in rep["skipped"]] == ["onnxruntime-cpu-fp32-gone"]
    failed = {(f["name"], f.get("batch")): f for f in rep["failed"]}
    load = failed[("onnxruntime-cpu-fp32-load", None)]
    assert load["stage"] == "failed to load" and "engine file is garbage" in load["reason"]
    crash = failed[("onnxruntime-cpu-fp32-run", 2)]
    assert crash["stage"] == "crashed while timing" and "illegal memory access" in crash["reason"]
    assert (load["status"], crash["status"], rep["skipped"][0]["status"]) == ("broken", "crashed", "skipped")
    rows = {(r["name"], r["batch"]): r for r in rep["results"]}
    assert set(rows) == {("torch-cpu-fp32-folded-compile", 2), ("torch-cpu-fp32-folded-compile", 3)}
    assert all(r["ran_compiled"] is True for r in rows.values())
    assert rep["work"]["macs_per_sample"] > 0 and rep["work"]["graph"] is None  # counted from torch: no ONNX here
    md = (tmp_path / "out" / "bench.md").read_text()
    assert "crashed while timing" in md and "failed to load" in md


def test_bench_settings_are_checked_and_exposed_by_the_cli(tmp_path, cli):
    from nfdeploy.perf import BenchError

    with pytest.raises(BenchError, match="threads"):
        bench_report(tmp_path / "nowhere", None, BenchOptions(threads=0), log=quiet)
    r = cli("bench", "--help", env={"COLUMNS": "200"})
    assert r.returncode == 0 and all(f in r.stdout for f in ("--max-time", "--threads", "--no-compile")), r.stdout


def test_fastest_passing_picks_per_precision_and_batch_the_fastest_that_passed():
    from nfdeploy.perf.assemble import fastest_passing

    rows = [
        {"name": "fast-but-failed", "precision": "fp32", "batch": 1, "median_ms": 1.0},
        {"name": "slow-pass", "precision": "fp32", "batch": 1, "median_ms": 3.0},
        {"name": "mid-pass", "precision": "fp32", "batch": 1, "median_ms": 2.0},
        {"name": "fast-but-failed", "precision": "fp32", "batch": 8, "median_ms": 4.0},
        {"name": "unchecked", "precision": "int8", "batch": 1, "median_ms": 0.5},
    ]
    statuses = {"fast-but-failed": "FAIL", "slow-pass": "pass", "mid-pass": "pass"}
    got = {(v["precision"], v["batch"]): v for v in fastest_passing(rows, statuses)}
    assert got[("fp32", 1)]["fastest_passing"] == "mid-pass" and got[("fp32", 1)]["fastest_passing_ms"] == 2.0
    assert got[("fp32", 1)]["fastest"] == "fast-but-failed" and got[("fp32", 1)]["fastest_parity"] == "FAIL"
    assert got[("fp32", 8)]["fastest_passing"] is None
    assert (
        got[("int8", 1)]["fastest_passing"] is None and got[("int8", 1)]["fastest_parity"] == "not in the parity report"
    )
    assert fastest_passing(rows, None) == []  # no parity report: no verdict


def test_bench_report_names_the_fastest_backend_that_passed_parity(tmp_path):
    """A real small bench beside a parity.json that fails the folded backend: the verdict is the unfolded one;
    without a parity report the report says the fastest backend is unchecked."""
    import json

    from nfdeploy.perf.assemble import NO_PARITY_NOTE

    m = randomize_(create_model("nf_resnet_c8")).eval()
    src = ExportSource(model_manifest("nf_resnet_c8", SHAPE, asdict(m.cfg)), m, tmp_path / "export")
    (tmp_path / "export").mkdir()
    folded = TorchBackend(BackendSpec("torch", "cpu", "fp32", "folded"), SHAPE, src.folded)
    unfolded = TorchBackend(BackendSpec("torch", "cpu", "fp32", "unfolded"), SHAPE, lambda: src.model)
    parity_dir = tmp_path / "export-reports"  # default_report_dir of the export
    parity_dir.mkdir()
    (parity_dir / "parity.json").write_text(
        json.dumps({"backends": [{"name": folded.name, "status": "FAIL"}, {"name": unfolded.name, "status": "pass"}]})
    )
    settings = BenchOptions(
        batches=(2,), min_time=0.02, warmup=0.0, min_iters=1, max_time=0.2, compare=False, threads=1
    )
    rep = bench_report(src, tmp_path / "out", settings, backends=[folded, unfolded], log=quiet).to_dict()
    (verdict,) = rep["fastest_passing"]["rows"]
    assert (verdict["precision"], verdict["batch"], verdict["fastest_passing"]) == ("fp32", 2, unfolded.name)
    assert rep["fastest_passing"]["parity_report"] == str(parity_dir / "parity.json")
    md = (tmp_path / "out" / "bench.md").read_text()
    assert "## Fastest backend that passed parity" in md and f"| fp32 | 2 | {unfolded.name} |" in md
    (parity_dir / "parity.json").unlink()
    rep = bench_report(src, tmp_path / "out2", settings, backends=[folded, unfolded], log=quiet).to_dict()
    assert rep["fastest_passing"]["rows"] == [] and rep["fastest_passing"]["note"] == NO_PARITY_NOTE
    assert NO_PARITY_NOTE in (tmp_path / "out2" / "bench.md").read_text()


def test_one_parity_report_reader_for_bench_and_serve(tmp_path):
    """parity.read_parity_result is the one reader: no report → None (bench: no verdict; serve: unchecked); a report
    that exists but is not one → a one-line error naming the file, which bench reports as "unreadable" and serve
    does not mistake for "unchecked"."""
    import pytest

    from nfdeploy.check.parity import PARITY_JSON, read_parity_result
    from nfdeploy.errors import UserError
    from nfdeploy.perf.assemble import NO_PARITY_NOTE, read_parity_statuses
    from nfdeploy.serve.choice import parity_verdict

    export = tmp_path / "export"
    export.mkdir()
    assert read_parity_result(export) is None
    assert read_parity_statuses(export) == (None, NO_PARITY_NOTE)
    assert parity_verdict(export, "onnxruntime-cpu-fp32") == "unchecked"
    report = tmp_path / "export-reports" / PARITY_JSON
    report.parent.mkdir()
    report.write_text('{"backends": [{"name": "onnxruntime-cpu-fp32", "status": "pass"}]}')
    assert read_parity_result(export).row("onnxruntime-cpu-fp32").status == "pass"
    assert read_parity_statuses(export) == ({"onnxruntime-cpu-fp32": "pass"}, str(report))
    assert parity_verdict(export, "onnxruntime-cpu-fp32") == "pass"
    for bad in ('{"backends": {"onnxruntime-cpu-fp32": "pass"}}', "[1, 2]", '{"backends": [{"status": "pass"}]}', "{"):
        report.write_text(bad)
        with pytest.raises(UserError, match="parity"):
            read_parity_result(export)
        statuses, why = read_parity_statuses(export)
        assert statuses is None and why.startswith("parity report unreadable")
        with pytest.raises(UserError):
            parity_verdict(export, "onnxruntime-cpu-fp32")
