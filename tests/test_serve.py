"""Serving: the bundled tritonserver on free loopback ports serving the repository `nfdeploy package` writes;
a few seconds of load with every response compared bitwise with the same sample alone; a NaN flood beside
good clients, bad requests, a burst, an overload refused at once, a disconnect, a restart, the clean stop;
readiness polled from the start; a broken config refused with Triton's own reason; the backend choice from
the saved reports; the batch-invariant mode; and nothing left running afterwards."""

import json
import shutil
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, write_recipe

pytest.importorskip("pytriton", reason="nfdeploy[serve] is not installed (its wheel carries tritonserver)")

from nfdeploy.check.backends import default_report_dir, export_backend
from nfdeploy.check.parity import ParityOptions, parity_report
from nfdeploy.config import load_recipe
from nfdeploy.export import ExportOptions, export_run
from nfdeploy.serve.choice import FALLBACK_BACKEND, choose_backend
from nfdeploy.serve.client import Target, model_facts
from nfdeploy.serve.expectation import expectation
from nfdeploy.serve.faults import burst
from nfdeploy.serve.loadtest import LoadOptions, loadtest
from nfdeploy.serve.loadtest_result import LoadTestResult, read_loadtest
from nfdeploy.serve.python_model import ServedModel
from nfdeploy.serve.repository import (
    PackageOptions,
    RepositoryError,
    check_repository,
    describe_repository,
    package_export,
)
from nfdeploy.serve.server import ModelServer, ServeOptions, ServeProcess
from nfdeploy.serve.tritonserver import ServeError, ServerAddress, TritonProcess, free_port, interpreter_problem
from nfdeploy.status import Status
from nfdeploy.train import train

quiet = lambda *a, **k: None  # noqa: E731
SERVED = "onnxruntime-cpu-fp32"
TORCH = "torch-cpu-fp32-folded"
MODEL = "nf_resnet_c8"


def tritonservers() -> list[int]:
    """Pids of tritonserver processes on this machine."""
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if (p / "comm").read_text().strip() == "tritonserver":
                    pids.append(int(p.name))
            except OSError:
                pass
    return pids


@pytest.fixture(scope="module", autouse=True)
def no_stray_servers():
    before = set(tritonservers())
    yield
    assert set(tritonservers()) - before == set(), "a tritonserver process outlived the serve tests"


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("serve")
    recipe = load_recipe(
        str(write_recipe(d / "r.toml", data={"synthetic_size": 64, "num_classes": 4, "input_size": 16}))
    )
    run = train(recipe, d / "run", progress=False, log=quiet)
    export_run(run.run_dir, d / "export", ExportOptions(precisions=("fp32",)), log=quiet)
    parity_report(
        d / "export", options=ParityOptions(only=[SERVED, TORCH], max_samples=32, invariance_samples=4), log=quiet
    )
    return d / "export"


def address() -> ServerAddress:
    return ServerAddress("127.0.0.1", free_port(), free_port(), free_port())


def served(export: Path, **package) -> ModelServer:
    return ModelServer(export, ServeOptions(package=PackageOptions(**package), address=address()), log=quiet)


def test_loadtest_every_request_answered_on_its_own(export_dir, tmp_path):
    """A queue of 8 at max batch 8: the sweep answers everything bitwise, an overload of 40 clients × 4 is
    answered or refused at once (nothing else), every good request beside a NaN flood is answered."""
    opts = LoadOptions(
        concurrency=(1, 4),
        window_s=0.5,
        max_windows=4,
        samples=8,
        overload=40,
        overload_requests=4,
        faults=True,
        burst_clients=0,
        speed=True,
        speed_time_s=0.5,
    )
    result = loadtest(
        export_dir,
        tmp_path / "lt",
        opts,
        serve_args=["--backend", SERVED, "--max-batch", "8", "--max-queue-size", "8"],
        log=quiet,
    )
    rep = result.to_dict()
    params = rep["served"]["parameters"]
    assert (
        params["nfdeploy.backend"] == SERVED
        and params["nfdeploy.check.parity"] == "pass"
        and params["nfdeploy.checked"] == "yes"
    )
    assert (
        params["nfdeploy.artifact_sha256"]
        == json.loads((export_dir / "manifest.json").read_text())["onnx"]["fp32"]["sha256"]
    )
    assert rep["served"]["max_queue_size"] == 8 and rep["served"]["max_batch"] == 8
    formed = set()
    for row in rep["levels"]:
        assert row["sent"] == row["ok"] + sum(row["errors"].values()) and sum(row["errors"].values()) == 0, row[
            "errors"
        ]
        assert row["ok"] > 0 and row["correctness"]["bitwise_share"] == 1.0 and row["correctness"]["max_ulp"] == 0
        assert row["correctness"]["top1_agreement_vs_fp64"] == 1.0
        formed |= set(row["correctness_by_batch"])
        assert row["server_compute_infer_us"] > 0 and sum(row["batch_stats"].values()) > 0
    assert max(formed) > 1, "concurrency 4 never formed a batch above 1: the invariance check saw no batching"
    over = rep["overload"]
    assert over["sent"] == 160 and over["sent"] == over["answered"] + over["refused"], over["errors"]
    assert over["refused"] > 0 and "maximum queue size" in over["messages"]["refused"] and over["ready_after"]
    assert over["correctness"]["bitwise_share"] == 1.0
    faults = rep["faults"]
    flood = faults["nan_flood"]
    # 9 clients against a queue of 8 may be refused for room; never for a NaN batch-mate.
    good = flood["good"]
    assert good["ok"] + good["errors"]["refused"] == good["sent"] == 192 and good["ok"] > 150, good
    assert good["correctness"]["bitwise_share"] == 1.0 and max(good["executed_batches"]) > 1
    nan = flood["bad"]["non_finite"]
    assert nan["sent"] > 0 and nan["ok"] == 0 and "non-finite" in nan["messages"]["rejected"]
    for kind, t in faults["bad_requests"]["bad"].items():
        assert t["ok"] == 0 and t["errors"]["rejected"] == t["sent"] > 0, (kind, t)
    assert "batch-size must be <= 8" in faults["bad_requests"]["bad"]["batch_above_max"]["messages"]["rejected"]
    assert faults["disconnect"] == {"ready_after": True, "bitwise_after": True}
    assert faults["restart"]["first_exit_code"] == 0 and faults["restart"]["bitwise_identical"]
    assert faults["restart"]["ready_polls_before_200"] > 0  # the poll started before the server was up
    assert rep["server_exit_code"] == 0
    log = (tmp_path / "lt-server.log").read_text()  # what `nfdeploy serve` printed, both times it ran
    assert log.count("\nready\n") == 2 and log.count("  grpc: 127.0.0.1:") == 2 and "draining" in log
    assert (tmp_path / "lt" / "loadtest.md").is_file() and (tmp_path / "lt" / "loadtest.png").is_file()
    sp = rep["speed"]["c1"]  # interleaved: served and in-process rounds paired, each an interval
    assert (
        sp["rounds"] >= 5
        and sp["difference_ms"]["ci95"][0] <= sp["difference_ms"]["median"] <= sp["difference_ms"]["ci95"][1]
    )
    assert sp["cost_split"]["server_compute_infer_us"] > 0 and sp["cost_split"]["client_and_transport_us"] is not None
    # The typed result: every fault met its expectation, and loadtest.json reads back to the same result.
    assert [(k, s) for k, s, _ in result.verdicts()] == [
        (k, Status.PASS) for k in ("overload", "nan_flood", "bad_requests", "disconnect", "restart")
    ]
    saved = json.loads((tmp_path / "lt" / "loadtest.json").read_text())
    assert saved["format"] == "nfdeploy-loadtest-v2"
    back = read_loadtest(tmp_path / "lt")
    assert json.loads(json.dumps(back.to_dict())) == saved == json.loads(json.dumps(rep, default=float))
    assert isinstance(back, LoadTestResult) and back.verdicts() == result.verdicts()
    # A verdict is read from the figures: an unclean stop, a NaN request answered, a good request timed out.
    saved["faults"]["restart"]["first_exit_code"] = -9
    saved["faults"]["nan_flood"]["bad"]["non_finite"]["ok"] = 1
    saved["faults"]["bad_requests"]["good"]["errors"]["timeout"] = 1
    saved["overload"]["ready_after"] = False
    failed = {k: s for k, s, _ in LoadTestResult.from_dict(saved).verdicts()}
    assert failed == {k: Status.PASS if k == "disconnect" else Status.FAIL for k in failed}


def test_nan_flood_leaves_every_good_request_answered(export_dir):
    """The default queue: 8 good clients × 24 beside a NaN client; all 192 answered, bitwise their sample alone."""
    from nfdeploy.serve.faults import nan_flood

    with served(export_dir, backend=SERVED, max_batch=8) as server:
        target = Target(server.urls["grpc"], MODEL, ("input", "logits"))
        exp = expectation(export_dir, SERVED, 8, 0)
        flood = nan_flood(target, exp).to_dict()
    good = flood["good"]
    assert good["sent"] == good["ok"] == 192 and good["correctness"]["bitwise_share"] == 1.0, good
    assert flood["bad"]["non_finite"]["errors"]["rejected"] == flood["bad"]["non_finite"]["sent"] > 0


def test_answer_refuses_only_the_bad_request(export_dir):
    """The Python model's batching: a NaN request among good ones gets its own refusal; the others their output
    alone, bitwise (ONNX Runtime CPU fp32 is batch-invariant)."""
    backend = export_backend(export_dir, SERVED)
    with backend:
        x = np.random.default_rng(0).standard_normal((5, 3, 16, 16)).astype(np.float32)
        alone = [backend.run(x[i : i + 1]) for i in range(5)]
        bad = x[:1].copy()
        bad[0, 0, 0, 0] = np.inf
        answers = ServedModel(backend, "input", "logits", 8).answer([x[0:1], bad, x[1:3], x[3:5]])
    assert isinstance(answers[1], str) and "non-finite" in answers[1]
    got = np.concatenate([answers[0], answers[2], answers[3]])
    assert got.view(np.uint32).tolist() == np.concatenate(alone).view(np.uint32).tolist()


def test_a_burst_of_64_clients_is_answered_with_the_default_queue(export_dir):
    with served(export_dir, backend=SERVED, max_batch=8) as server:
        target = Target(server.urls["grpc"], MODEL, ("input", "logits"))
        b = burst(target, expectation(export_dir, SERVED, 8, 0), clients=64, requests_each=16).to_dict()
    assert b["sent"] == b["answered"] == 1024 and b["correctness"]["bitwise_share"] == 1.0, b["errors"]


def test_a_queue_timeout_refuses_and_the_server_still_stops_cleanly(export_dir):
    with served(export_dir, backend=SERVED, max_batch=1, queue_timeout_us=1) as server:
        target = Target(server.urls["grpc"], MODEL, ("input", "logits"))
        b = burst(target, expectation(export_dir, SERVED, 8, 0), clients=16, requests_each=4).to_dict()
        code = server.stop()
    assert b["sent"] == b["answered"] + b["refused"] and b["refused"] > 0, b["errors"]
    assert "timeout" in b["messages"]["refused"].lower() and code == 0


def test_ready_only_once_the_model_answered(export_dir, tmp_path):
    """/v2/health/ready polled from the start is never 200 before the model answered its probe and warm-up:
    the server opens its endpoints only after loading, and the first 200 is followed by a good answer."""
    proc = ServeProcess(export_dir, ["--backend", SERVED, "--max-batch", "4"], log_file=tmp_path / "serve.log")
    proc.start()
    try:
        assert [s for _, s in proc.ready_polls if s is not None] == [200], proc.ready_polls  # nothing answered before
        facts = model_facts(proc.url)  # the repository index, readable on loopback by default
        target = Target.of(proc.url, facts)
        out, _ = target.client().infer(np.zeros((1, 3, 16, 16), np.float32), 10.0)
        assert out.shape == (1, 4)
    finally:
        assert proc.stop() == 0
    triton_log = next(
        line.split(": ", 1)[1]
        for line in (tmp_path / "serve.log").read_text().splitlines()
        if "tritonserver log:" in line
    )
    assert not Path(triton_log).exists()  # a clean stop removes its work dir


def test_triton_logs_the_probe_before_opening_its_endpoints(export_dir, tmp_path):
    with ModelServer(
        export_dir,
        ServeOptions(package=PackageOptions(backend=SERVED), address=address(), log_file=tmp_path / "triton.log"),
        log=quiet,
    ):
        pass
    lines = (tmp_path / "triton.log").read_text().splitlines()
    probe = next(i for i, line in enumerate(lines) if "answered a probe" in line)
    http = next(i for i, line in enumerate(lines) if "Started HTTPService" in line)
    assert probe < http


def test_a_broken_config_fails_to_load_with_tritons_reason(export_dir, tmp_path):
    repo = tmp_path / "repo"
    r = run_cli("package", str(export_dir), "--out", str(repo), "--backend", SERVED, "--max-batch", "16", timeout=300)
    assert r.returncode == 0 and f"{MODEL}: ok" in r.stdout and "loaded by the bundled tritonserver" in r.stdout, (
        r.stdout + r.stderr
    )
    cfg = repo / MODEL / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace("max_batch_size: 16", "max_batch_sise: 16"))
    ports = [str(free_port()) for _ in range(3)]
    r = run_cli(
        "serve", str(repo), "--http-port", ports[0], "--grpc-port", ports[1], "--metrics-port", ports[2], timeout=120
    )
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "Triton did not load the repository" in r.stderr and 'no field named "max_batch_sise"' in r.stderr, r.stderr


def test_a_model_that_fails_to_initialize_fails_to_load(export_dir, tmp_path):
    repo = tmp_path / "repo"
    package_export(export_dir, repo, PackageOptions(backend=SERVED), log=quiet)
    with open(repo / MODEL / "1" / "export" / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ServeError, match="Triton did not load.*does not match its manifest"):
        TritonProcess(repo, address()).start()


def test_the_packaged_repository_is_what_serve_serves(export_dir, tmp_path):
    made = package_export(export_dir, tmp_path / "repo", PackageOptions(backend=SERVED, max_batch=16), log=quiet)
    assert [m.name for m in made] == [MODEL]
    cfg = describe_repository(tmp_path / "repo")[MODEL]
    assert cfg["backend"] == "python" and cfg["maxBatchSize"] == 16
    assert cfg["input"][0]["dims"] == ["3", "16", "16"] and cfg["output"][0]["dims"] == ["4"]
    assert cfg["dynamicBatching"]["defaultQueuePolicy"]["maxQueueSize"] == 512  # 32 × max batch
    assert [w["batchSize"] for w in cfg["modelWarmup"]] == [1, 16]
    assert cfg["parameters"]["EXECUTION_ENV_PATH"]["stringValue"] == sys.prefix
    assert check_repository(tmp_path / "repo", export_dir) == {MODEL: []}
    with ModelServer(tmp_path / "repo", ServeOptions(address=address()), log=quiet) as server:
        facts = model_facts(server.urls["grpc"])
        assert facts.parameters["nfdeploy.backend"] == SERVED and facts.max_batch == 16


def test_native_repository_for_tritons_container(export_dir, tmp_path):
    package_export(export_dir, tmp_path / "repo", PackageOptions(native=True, max_batch=16), log=quiet)
    cfg = describe_repository(tmp_path / "repo")[MODEL]
    assert cfg["platform"] == "onnxruntime_onnx" and cfg["instanceGroup"] == [{"kind": "KIND_CPU", "count": 1}]
    assert check_repository(tmp_path / "repo", export_dir) == {MODEL: []}
    with open(tmp_path / "repo" / MODEL / "1" / "model.onnx", "ab") as f:
        f.write(b"\0")
    assert check_repository(tmp_path / "repo", export_dir)[MODEL] == [
        "1/model.onnx: sha256 matches no file of the export's manifest"
    ]


@pytest.mark.parametrize(
    "breakage, expected",
    [
        (("max_batch_size: 16", "max_batch_sise: 16"), "does not parse"),  # a misspelled field
        (("kind: KIND_CPU", "kind: KIND_CPUS"), "does not parse"),  # an unknown enum value
        (("dims: [ 3, 16, 16 ]", "dims: [ 3, 16, 17 ]"), "differ from the export"),  # a wrong dim
        (('backend: "python"', 'backend: "pyton"'), "not one Triton knows"),
        (("dynamic_batching { ", "dynamic_batching { preferred_batch_size: [ 4 ] "), "preferred_batch_size"),
        (("max_batch_size: 16", "max_batch_size: 1"), "warm-up"),  # warm-up above the max batch
    ],
)
def test_a_broken_config_fails_its_check(export_dir, tmp_path, breakage, expected):
    repo = tmp_path / "repo"
    package_export(export_dir, repo, PackageOptions(backend=SERVED, max_batch=16), log=quiet)
    cfg = repo / MODEL / "config.pbtxt"
    old, new = breakage
    assert old in cfg.read_text()
    cfg.write_text(cfg.read_text().replace(old, new, 1))
    problems = check_repository(repo, export_dir)[MODEL]
    assert any(expected in p for p in problems), problems


def test_the_choice_is_the_fastest_backend_that_passed(export_dir, tmp_path):
    """From a real parity report and a real bench report of two CPU backends; the fallback names its reason;
    a faster backend that failed parity is never chosen."""
    from nfdeploy.check.backends import export_backends, manifest_source
    from nfdeploy.perf import BenchOptions, bench_report

    export = tmp_path / "export"
    shutil.copytree(export_dir, export)
    backends = export_backends(manifest_source(export), compile=False)
    assert choose_backend(export, backends, 8).reason.startswith("no parity report")
    shutil.copytree(default_report_dir(export_dir), default_report_dir(export))
    assert choose_backend(export, backends, 8).reason.startswith("no bench report")
    options = BenchOptions(batches=[1, 4], only=[SERVED, TORCH], min_time=0.5, warmup=0.3, max_time=2.0, compare=False)
    bench_report(export, None, options, log=quiet)
    bench = json.loads((default_report_dir(export) / "bench.json").read_text())
    per = {r["name"]: r["median_ms"] / 4 for r in bench["results"] if r["batch"] == 4}
    choice = choose_backend(export, backends, 8)
    assert choice.name == min(per, key=per.get) and "fastest of 2" in choice.reason, (choice, per)
    report_path = default_report_dir(export) / "parity.json"
    report = json.loads(report_path.read_text())
    for row in report["backends"]:
        row["status"] = "FAIL" if row["name"] == choice.name else row["status"]
    report_path.write_text(json.dumps(report))
    other = choose_backend(export, backends, 8)
    assert other.name != choice.name and other.name in per and "fastest of 1" in other.reason
    for row in report["backends"]:
        row["status"] = "FAIL"
    report_path.write_text(json.dumps(report))
    assert choose_backend(export, backends, 8).name == FALLBACK_BACKEND


def test_batch_invariant_mode_pads_torch_and_skips_onnxruntime(export_dir, tmp_path):
    """torch CPU's outputs change with the batch size (parity measured it): --batch-invariant pads to the max batch
    and every response under load equals its sample alone (padded); ONNX Runtime was measured bitwise invariant,
    so it is not padded and the parameters say why."""
    ort = package_export(export_dir, tmp_path / "ort", PackageOptions(backend=SERVED, batch_invariant=True), log=quiet)[
        0
    ]
    assert (
        ort.parameters["nfdeploy.pad_to"] == "0"
        and "bitwise batch-invariant as measured" in ort.parameters["nfdeploy.batch_invariance"]
    )
    opts = LoadOptions(concurrency=(4,), window_s=0.5, max_windows=4, samples=8, faults=False, speed=False)
    rep = loadtest(
        export_dir,
        tmp_path / "lt",
        opts,
        serve_args=["--backend", TORCH, "--max-batch", "8", "--batch-invariant", "--threads", "1"],
        log=quiet,
    ).to_dict()
    assert rep["served"]["parameters"]["nfdeploy.pad_to"] == "8"
    row = rep["levels"][0]
    assert max(row["correctness_by_batch"]) > 1 and row["correctness"]["bitwise_share"] == 1.0, row[
        "correctness_by_batch"
    ]
    assert sum(row["errors"].values()) == 0


def test_refusals_need_no_server(export_dir, tmp_path):
    failed = tmp_path / "export"
    shutil.copytree(export_dir, failed)
    report = json.loads((default_report_dir(export_dir) / "parity.json").read_text())
    for row in report["backends"]:
        row["status"] = "FAIL" if row["name"] == SERVED else row["status"]
    default_report_dir(failed).mkdir()
    (default_report_dir(failed) / "parity.json").write_text(json.dumps(report))
    with pytest.raises(RepositoryError, match="parity verdict is FAIL; refusing"):
        package_export(failed, tmp_path / "repo", PackageOptions(backend=SERVED), log=quiet)
    assert not (tmp_path / "repo").exists()
    warnings = []
    allowed = package_export(
        failed, tmp_path / "repo", PackageOptions(backend=SERVED, allow_unchecked=True), log=warnings.append
    )[0].parameters
    assert allowed["nfdeploy.check.parity"] == "FAIL" and allowed["nfdeploy.allow_unchecked"] == "yes"
    assert allowed["nfdeploy.checked"] == "no" and len(warnings) == 1 and "FAIL" in warnings[0]
    bare = tmp_path / "bare"
    shutil.copytree(export_dir, bare)
    unchecked = package_export(bare, tmp_path / "repo2", PackageOptions(), log=warnings.append)[0].parameters
    assert unchecked["nfdeploy.check.parity"] == "unchecked" and unchecked["nfdeploy.backend"] == FALLBACK_BACKEND
    assert "no parity report" in unchecked["nfdeploy.chosen"] and "no parity verdict" in warnings[-1]
    with pytest.raises(RepositoryError, match="no such backend"):
        package_export(export_dir, tmp_path / "repo3", PackageOptions(backend="onnxruntime-cpu-fp64"), log=quiet)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        r = run_cli(
            "serve",
            str(export_dir),
            "--grpc-port",
            str(busy),
            "--http-port",
            str(free_port()),
            "--metrics-port",
            str(free_port()),
            timeout=120,
        )
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and f"grpc port {busy}" in r.stderr, r.stderr
    r = run_cli("serve", str(tmp_path / "repo"), "--max-batch", "4", timeout=60)
    assert r.returncode == 2 and "is a repository" in r.stderr, r.stderr


def test_beyond_loopback_the_admin_apis_need_a_key(tmp_path):
    """Not started (tests listen on loopback only): the command a non-loopback host gets."""
    t = TritonProcess(tmp_path, ServerAddress("0.0.0.0", 1, 2, 3), admin_key="k")
    cmd = " ".join(t.command(tmp_path))
    assert "--http-restricted-api=model-repository,shared-memory,logging,trace:nfdeploy-admin-key=k" in cmd
    assert "--grpc-restricted-protocol=model-repository,shared-memory,logging,trace:nfdeploy-admin-key=k" in cmd
    assert "restricted" not in " ".join(TritonProcess(tmp_path, address()).command(tmp_path))


def test_interpreter_without_a_shared_libpython_is_named(monkeypatch):
    import sysconfig

    assert interpreter_problem() is None  # this suite's venv can serve
    real = sysconfig.get_config_var
    monkeypatch.setattr(sysconfig, "get_config_var", lambda k: 0 if k == "Py_ENABLE_SHARED" else real(k))
    msg = interpreter_problem()
    assert sys.executable in msg and "shared libpython" in msg and "PYTHON=" in msg and "\n" not in msg
