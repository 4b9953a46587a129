"""Interleaved rounds, stability windows and bootstrap intervals on synthetic data with known answers
(deterministic fake timers: nothing here depends on how fast the machine is), plus the structure of
`bench --against` on a real digits export against a copy of itself (no timed assertion: whether the
interval contains 1.00 is a benchmark figure, bench/against_selfcheck.py, not a test)."""

import itertools
import json
import math
import shutil

import numpy as np
import pytest

from nfdeploy.perf import (
    AgainstResult,
    BenchOptions,
    RoundPlan,
    bench_against,
    bootstrap_ci,
    interleaved_rounds,
    is_settled,
    ratio_summary,
)
from nfdeploy.perf.markdown import informative_table
from nfdeploy.perf.rounds import cv, window_medians

FAST = RoundPlan(warmup_s=0.0, min_time_s=0.0, min_iters=1, max_time_s=60.0)


def constant(ms):
    return lambda: (ms, None)


def test_bootstrap_known_answers():
    assert bootstrap_ci([3.0]) == (3.0, 3.0)
    assert bootstrap_ci([2.5] * 20) == (2.5, 2.5)
    lo, hi = bootstrap_ci(np.arange(1, 100, dtype=float))  # median 50, n = 99
    assert lo < 50 < hi and 40 < lo and hi < 60
    assert bootstrap_ci(np.arange(1, 100, dtype=float)) == (lo, hi)  # fixed seed: reproducible
    with pytest.raises(ValueError):
        bootstrap_ci([])


def test_ratio_of_paired_rounds():
    rng = np.random.default_rng(1)
    b = rng.uniform(1.0, 5.0, size=30)  # a machine whose speed changes a lot from round to round ...
    r = ratio_summary((1.5 * b).tolist(), b.tolist())  # ... but A is always 1.5 x B within a round
    assert r["ratio"] == pytest.approx(1.5) and r["ci95"] == pytest.approx([1.5, 1.5])
    assert r["cv"] == pytest.approx(0.0, abs=1e-12) and r["settled"] and not r["noisy"] and r["rounds"] == 30
    with pytest.raises(ValueError):
        ratio_summary([1.0, 2.0], [1.0])


def test_stability_windows():
    assert window_medians([1, 2, 3, 10, 20, 30], 3, 2) == [2.0, 20.0]
    assert window_medians([1, 2], 3, 2) == []
    assert is_settled([1.0] * 12)
    assert not is_settled([1.0] * 11)  # fewer rounds than 3 windows of 4
    assert is_settled([1.0] * 4 + [1.02] * 4 + [0.99] * 4)  # within +-3%
    assert not is_settled([1.0] * 4 + [1.0] * 4 + [1.10] * 4)  # last window 10% off
    assert is_settled([5.0] * 20 + [1.0] * 12)  # only the last windows count
    assert cv([1.0, 1.0]) == 0.0 and cv([1.0]) is None


def test_interleaved_constant_members_settle_with_exact_ratios():
    calls = []

    def timer(name, ms):
        def f():
            calls.append(name)
            return ms, None

        return f

    res = interleaved_rounds(
        {"A": timer("A", 2.0), "B": timer("B", 1.0), "C": timer("C", 4.0)}, FAST, ratios=[("A", "B"), ("B", "C")]
    )
    assert res["settled"] and res["stopped_by"] == "settled" and res["rounds"] == FAST.min_rounds
    assert res["ratios"]["A/B"]["ratio"] == 2.0 and res["ratios"]["A/B"]["ci95"] == [2.0, 2.0]
    assert res["ratios"]["B/C"]["ratio"] == 0.25
    for name, ms in (("A", 2.0), ("B", 1.0), ("C", 4.0)):
        m = res["members"][name]
        assert m["median_ms"] == ms and m["round_iters"] == 1 and m["iterations"] == m["rounds"] == FAST.min_rounds
        assert not m["noisy"] and m["host_ms"]["p99"] == ms and m["device_ms"] is None
    timed = calls[-3 * FAST.min_rounds :]  # after warm-up: rounds rotate their start (A B C, B C A, C A B, ...)
    assert timed[:9] == list("ABCBCACAB")


def test_interleaved_drifting_member_is_noisy():
    grow = itertools.count()
    drifting = lambda: (1.1 ** next(grow), None)  # noqa: E731 - 10% slower every call: never settles
    plan = RoundPlan(warmup_s=0.0, min_time_s=0.0, min_iters=1, max_time_s=60.0, max_iters=200)
    res = interleaved_rounds({"A": drifting, "B": constant(1.0)}, plan, ratios=[("A", "B")])
    assert not res["settled"] and res["stopped_by"] == "max iterations"
    assert res["members"]["A"]["noisy"] and not res["members"]["B"]["noisy"]
    assert res["ratios"]["A/B"]["noisy"] and res["ratios"]["A/B"]["cv"] > 0.5


def test_device_timing_is_primary_when_asked():
    res = interleaved_rounds(
        {"A": lambda: (5.0, 2.0), "B": lambda: (5.0, 1.0)}, FAST, ratios=[("A", "B")], primary="device_ms"
    )
    assert res["ratios"]["A/B"]["ratio"] == 2.0 and res["members"]["A"]["device_ms"]["median"] == 2.0


def test_informative_table_drops_constant_and_empty_columns():
    rows = [
        {"backend": "a", "batch": 1, "threads": 2, "host ms": "", "ms": "1.0"},
        {"backend": "b", "batch": 1, "threads": 2, "host ms": "", "ms": "2.0"},
    ]
    text = "\n".join(informative_table(rows, keep=("batch",)))
    header = text.splitlines()[0]
    assert header == "| backend | batch | ms |"
    assert "Same on every row: threads = 2." in text


@pytest.fixture(scope="module")
def digits_export(tmp_path_factory):
    from nfdeploy.config import load_recipe
    from nfdeploy.export import ExportOptions, export_run
    from nfdeploy.train import train

    quiet = lambda *a, **k: None  # noqa: E731
    root = tmp_path_factory.mktemp("against")
    run = train(
        load_recipe("nf_digits", {"train.epochs": 1, "train.threads": 2}), root / "run", progress=False, log=quiet
    ).run_dir
    export_run(run, root / "export", ExportOptions(precisions=("fp32",)), log=quiet)
    return root


@pytest.mark.slow
def test_against_copy_structure(digits_export):
    root = digits_export
    shutil.copytree(root / "export", root / "copy")
    rep = bench_against(
        root / "export",
        root / "copy",
        root / "out",
        BenchOptions(
            batches=(1, 2),
            only=["torch-cpu-fp32-folded", "onnxruntime-cpu-fp32"],
            min_time=0.05,
            warmup=0.02,
            max_time=0.5,
            compile=False,
        ),
        log=lambda *a: None,
    ).to_dict()
    assert json.loads((root / "out" / "against.json").read_text()) == json.loads(json.dumps(rep))
    assert AgainstResult.read(root / "out").to_dict() == json.loads(json.dumps(rep))
    assert "## A / B" in (root / "out" / "against.md").read_text()
    assert rep["identical_onnx"] == {"fp32": True}
    assert rep["a"]["onnx_sha256"] == rep["b"]["onnx_sha256"]
    assert {(r["backend"], r["batch"]) for r in rep["rows"]} == {
        (n, b) for n in ("torch-cpu-fp32-folded", "onnxruntime-cpu-fp32") for b in (1, 2)
    }
    for r in rep["rows"]:
        assert math.isfinite(r["ratio"]) and r["ratio"] > 0 and r["ci95"][0] <= r["ratio"] <= r["ci95"][1]
        assert r["rounds"] >= 3 and r["a"]["rounds"] == r["b"]["rounds"] == r["rounds"]
        assert r["a"]["gflops"] > 0 and r["a"]["peak_share"] > 0
        assert r["a"]["memory_mb"] is not None and r["a"]["memory_mb"] >= 0
    assert rep["machine_load"]["before"]["loadavg_1_5_15"] is not None
