"""Serving: a real Triton server (PyTriton) on free loopback ports, a few seconds of load, every response
compared bitwise with the same sample run alone; bad requests, a disconnect, a restart, the clean stop;
the refusals that need no server; and nothing left running afterwards."""

import json
import os
import shutil
import socket
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli, write_recipe

pytest.importorskip("pytriton", reason="nfdeploy[serve] is not installed")

from nfdeploy.backends import default_report_dir  # noqa: E402
from nfdeploy.config import load_recipe  # noqa: E402
from nfdeploy.export import ExportOptions, export_run  # noqa: E402
from nfdeploy.parity import parity_report  # noqa: E402
from nfdeploy.serve.loadtest import LoadOptions, loadtest  # noqa: E402
from nfdeploy.serve.server import ModelServer, ServeError, ServeOptions, free_port, interpreter_problem  # noqa: E402
from nfdeploy.train import train  # noqa: E402

quiet = lambda *a, **k: None  # noqa: E731
SERVED = "onnxruntime-cpu-fp32"


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
    recipe = load_recipe(str(write_recipe(d / "r.toml", data={"synthetic_size": 64, "num_classes": 4, "input_size": 16})))
    run = train(recipe, d / "run", progress=False, log=quiet)
    export_run(run.run_dir, d / "export", ExportOptions(precisions=("fp32",)), log=quiet)
    parity_report(d / "export", only=[SERVED], max_samples=32, invariance_samples=4, log=quiet)
    return d / "export"


def ports() -> dict:
    return {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}


def test_loadtest_every_response_equals_the_sample_alone(export_dir, tmp_path):
    opts = LoadOptions(concurrency=(1, 4), window_s=0.5, max_windows=4, samples=8, overload=24, faults=True)
    rep = loadtest(export_dir, tmp_path / "lt", opts, max_batch=8, max_queue_delay_us=2000, log=quiet)
    params = rep["served"]["parameters"]
    assert params["nfdeploy.backend"] == SERVED and params["nfdeploy.parity"] == "pass" and params["nfdeploy.checked"] == "yes"
    assert params["nfdeploy.artifact_sha256"] == json.loads((export_dir / "manifest.json").read_text())["onnx"]["fp32"]["sha256"]
    formed = set()
    for row in rep["levels"]:
        assert row["sent"] == row["ok"] + sum(row["errors"].values()) and sum(row["errors"].values()) == 0, row["errors"]
        assert row["ok"] > 0 and row["correctness"]["bitwise_share"] == 1.0 and row["correctness"]["max_ulp"] == 0
        assert row["correctness"]["top1_agreement_vs_fp64"] == 1.0
        formed |= set(row["correctness_by_batch"])
        assert row["server_compute_infer_us"] > 0 and sum(row["batch_stats"].values()) > 0
    assert max(formed) > 1, "concurrency 4 never formed a batch above 1: the invariance check saw no batching"
    over = rep["overload"]
    assert over["sent"] == over["ok"] + sum(over["errors"].values()) and over["ready_after"]
    assert over["errors"]["rejected"] > 0 and "maximum queue size" in over["error_messages"]["rejected"]
    assert over["drained_after_s"] < 10  # the bounded queue leaves no long backlog
    faults = rep["faults"]
    for kind, t in faults["bad_requests"]["bad"].items():
        assert t["ok"] == 0 and t["errors"]["rejected"] == t["sent"] > 0, (kind, t)
    assert "non-finite" in faults["bad_requests"]["bad"]["non_finite"]["messages"]["rejected"]
    assert "batch-size must be <= 8" in faults["bad_requests"]["bad"]["batch_above_max"]["messages"]["rejected"]
    good = faults["bad_requests"]["good"]
    # A good request can only fail by sharing a batch with a non-finite one (PyTriton answers a batch as one).
    assert good["ok"] + good["failed_beside_a_bad_request"] == good["sent"] and good["correctness"]["bitwise_share"] == 1.0
    assert faults["disconnect"] == {"ready_after": True, "bitwise_after": True}
    assert faults["restart"]["first_exit_code"] == 0 and faults["restart"]["bitwise_identical"]
    assert rep["server_exit_code"] == 0
    log = (tmp_path / "lt-server.log").read_text()  # what `nfdeploy serve` printed, both times it ran
    assert log.count("\nready\n") == 2 and log.count("  grpc: 127.0.0.1:") == 2 and "draining" in log
    assert (tmp_path / "lt" / "loadtest.md").is_file() and (tmp_path / "lt" / "loadtest.png").is_file()
    assert json.loads((tmp_path / "lt" / "loadtest.json").read_text())["levels"][0]["concurrency"] == 1


def test_unchecked_backend_is_served_and_says_so(export_dir, tmp_path):
    """No parity report: one warning, and the model's parameters say "unchecked" (the loadtest test
    reads the same parameters back from a running server's config)."""
    bare = tmp_path / "export"
    shutil.copytree(export_dir, bare)
    warnings = []
    server = ModelServer(bare, ServeOptions(), log=warnings.append).prepare()
    assert server.parameters["nfdeploy.parity"] == "unchecked" and server.parameters["nfdeploy.checked"] == "no"
    assert server.parameters["nfdeploy.artifact"] == "model.onnx" and len(server.parameters["nfdeploy.artifact_sha256"]) == 64
    assert len(warnings) == 1 and "no parity verdict" in warnings[0]
    checked = ModelServer(export_dir, ServeOptions(), log=warnings.append).prepare()
    assert checked.parameters["nfdeploy.parity"] == "pass" and len(warnings) == 1


def test_refusals_need_no_server(export_dir, tmp_path):
    failed = tmp_path / "export"
    shutil.copytree(export_dir, failed)
    report = json.loads((default_report_dir(export_dir) / "parity.json").read_text())
    for row in report["backends"]:
        row["status"] = "FAIL" if row["name"] == SERVED else row["status"]
    default_report_dir(failed).mkdir()
    (default_report_dir(failed) / "parity.json").write_text(json.dumps(report))
    with pytest.raises(ServeError, match="parity verdict is FAIL; refusing"):
        ModelServer(failed, ServeOptions(**ports())).start()
    warnings = []
    allowed = ModelServer(failed, ServeOptions(allow_unchecked=True), log=warnings.append).prepare()
    assert allowed.parameters["nfdeploy.parity"] == "FAIL" and allowed.parameters["nfdeploy.allow_unchecked"] == "yes"
    assert allowed.parameters["nfdeploy.checked"] == "no" and len(warnings) == 1 and "FAIL" in warnings[0]
    with pytest.raises(ServeError, match="no such backend"):
        ModelServer(export_dir, ServeOptions(backend="onnxruntime-cpu-fp64", **ports())).start()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        r = run_cli("serve", str(export_dir), "--grpc-port", str(busy), "--http-port", str(free_port()),
                    "--metrics-port", str(free_port()), timeout=120)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and f"grpc port {busy}" in r.stderr, r.stderr


def test_interpreter_without_a_shared_libpython_is_named(monkeypatch):
    import sysconfig

    assert interpreter_problem() is None  # this suite's venv can serve
    real = sysconfig.get_config_var
    monkeypatch.setattr(sysconfig, "get_config_var", lambda k: 0 if k == "Py_ENABLE_SHARED" else real(k))
    msg = interpreter_problem()
    assert sys.executable in msg and "shared libpython" in msg and "PYTHON=" in msg and "\n" not in msg


def test_package_writes_a_repository_triton_parses(export_dir, tmp_path):
    from nfdeploy.serve.repository import check_repository, describe_repository

    r = run_cli("package", str(export_dir), "--out", str(tmp_path / "repo"), "--max-batch", "16", timeout=300)
    assert r.returncode == 0 and "nf_resnet_c8: ok" in r.stdout, r.stdout + r.stderr
    cfg = describe_repository(tmp_path / "repo")["nf_resnet_c8"]
    assert cfg["platform"] == "onnxruntime_onnx" and cfg["maxBatchSize"] == 16
    assert cfg["input"][0]["dims"] == ["3", "16", "16"] and cfg["output"][0]["dims"] == ["4"]
    assert cfg["instanceGroup"] == [{"kind": "KIND_CPU", "count": 1}] and "preferredBatchSize" not in cfg["dynamicBatching"]
    assert [w["batchSize"] for w in cfg["modelWarmup"]] == [1, 16]
    assert cfg["parameters"]["intra_op_thread_count"]["stringValue"] == str(len(os.sched_getaffinity(0)))
    assert check_repository(tmp_path / "repo", export_dir) == {"nf_resnet_c8": []}


@pytest.mark.parametrize("breakage, expected", [
    (("max_batch_size: 16", "max_batch_sise: 16"), "does not parse"),          # a misspelled field
    (("kind: KIND_CPU", "kind: KIND_CPUS"), "does not parse"),                  # an unknown enum value
    (("dims: [ 4 ]", "dims: [ 5 ]"), "differs from the ONNX graph"),            # a wrong dim
    (('platform: "onnxruntime_onnx"', 'platform: "onnx_runtime"'), "not one Triton knows"),
    (("dynamic_batching { ", "dynamic_batching { preferred_batch_size: [ 4 ] "), "preferred_batch_size"),
    (("max_batch_size: 16", "max_batch_size: 1"), "warm-up"),                  # warm-up above the max batch
])
def test_a_broken_config_fails_its_check(export_dir, tmp_path, breakage, expected):
    from nfdeploy.serve.repository import check_repository, package_export

    repo = package_export(export_dir, tmp_path / "repo", max_batch=16)
    cfg = repo / "nf_resnet_c8" / "config.pbtxt"
    old, new = breakage
    assert old in cfg.read_text()
    cfg.write_text(cfg.read_text().replace(old, new, 1))
    problems = check_repository(repo, export_dir)["nf_resnet_c8"]
    assert any(expected in p for p in problems), problems


def test_a_changed_model_file_fails_its_check(export_dir, tmp_path):
    from nfdeploy.serve.repository import check_repository, package_export

    repo = package_export(export_dir, tmp_path / "repo")
    with open(repo / "nf_resnet_c8" / "1" / "model.onnx", "ab") as f:
        f.write(b"\0")
    assert check_repository(repo, export_dir)["nf_resnet_c8"] == ["1/model.onnx: sha256 matches no file of the export's manifest"]
    (repo / "nf_resnet_c8" / "1" / "model.onnx").unlink()
    assert check_repository(repo, export_dir)["nf_resnet_c8"] == ["the file it names, 1/model.onnx, is missing"]
