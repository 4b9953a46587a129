"""Instruction sets as other hardware: `nfdeploy parity --isa WORD` runs parity in a child process with the
CPU libraries' caps set, records them in parity.json and provenance.json, and `nfdeploy compare` across
two such runs names each side's instruction set; an unknown word is a one-line error (exit 2)."""

import json
from pathlib import Path

import pytest
from conftest import run_cli, write_recipe

from nfdeploy.check.isa import (
    ISA_CAPS,
    ISA_VARIABLES,
    ORT_NOTE,
    isa_environment,
    parity_child_argv,
    parity_child_environment,
)
from nfdeploy.check.parity import ParityError, ParityOptions
from nfdeploy.config import load_recipe
from nfdeploy.export import OnnxOverrides, export_options, export_run
from nfdeploy.precision import tolerances
from nfdeploy.train import train

quiet = lambda *a, **k: None  # noqa: E731


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    """nf_resnet_c8 trained one epoch on synthetic 32² data, exported fp32."""
    d = tmp_path_factory.mktemp("isa")
    run = train(load_recipe(str(write_recipe(d / "recipe.toml"))), d / "run", progress=False, log=quiet).run_dir
    export_run(run, d / "export", export_options(onnx=OnnxOverrides(precisions=["fp32"], check=False)), log=quiet)
    return d / "export"


def native_capability() -> str:
    import torch

    return torch.backends.cpu.get_cpu_capability()


def test_every_word_caps_onednn_and_openvino_alike_and_default_strips_inherited_caps():
    for word, caps in ISA_CAPS.items():
        assert caps["ONEDNN_MAX_CPU_ISA"] == caps["OV_CPU_MAX_ISA"], word  # OpenVINO refuses a mismatch
    env = isa_environment(
        "default",
        {"ONEDNN_MAX_CPU_ISA": "AVX", "DNNL_MAX_CPU_ISA": "AVX", "ATEN_CPU_CAPABILITY": "default", "PATH": "/bin"},
    )
    assert env == {"PATH": "/bin", "NFDEPLOY_ISA": "default"}
    assert isa_environment("AVX512-Core", {})["ONEDNN_MAX_CPU_ISA"] == "AVX512_CORE"
    assert set(ISA_CAPS["sse41"]) <= set(ISA_VARIABLES)


def test_the_child_gets_the_same_options_and_this_nfdeploy():
    import os

    import nfdeploy

    options = ParityOptions(
        dataset="digits", only=["fp32", "onnxruntime-cpu"], max_samples=64, per_block=True, save_outputs=True, threads=1
    )
    argv = parity_child_argv("E", "O", options)
    assert argv[1:] == (
        ["-m", "nfdeploy", "parity", "E", "--max-samples", "64", "--out", "O", "--dataset", "digits", "--threads", "1"]
        + ["--only", "fp32", "--only", "onnxruntime-cpu", "--per-block", "--save-outputs"]
    )
    with pytest.raises(ParityError, match="takes no invariance_samples"):
        parity_child_argv("E", None, ParityOptions(invariance_samples=8))
    env = parity_child_environment("sse41")
    assert env["ONEDNN_MAX_CPU_ISA"] == "SSE41"
    here = Path(nfdeploy.__file__).resolve().parent.parent  # the dir holding the package this process imported
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(here)


def test_sse41_child_run_records_the_cap_and_compare_names_each_side(export_dir, tmp_path):
    common = ["--only", "fp32", "--max-samples", "64", "--threads", "1", "--save-outputs"]
    base = run_cli("parity", str(export_dir), "-o", str(tmp_path / "native"), *common)
    assert base.returncode == 0, base.stderr[-2000:]
    capped = run_cli("parity", str(export_dir), "--isa", "sse41", "-o", str(tmp_path / "sse41"), *common)
    assert capped.returncode == 0, capped.stderr[-2000:]
    prov = json.loads((tmp_path / "sse41" / "provenance.json").read_text())
    assert prov["isa"]["requested"] == "sse41"
    assert {k: prov["isa"]["env"][k] for k in ISA_CAPS["sse41"]} == ISA_CAPS["sse41"]
    assert prov["isa"]["onnxruntime"] == ORT_NOTE
    assert prov["isa"]["torch_cpu_capability"] == native_capability()  # ATen not capped: it also makes the data
    assert json.loads((tmp_path / "sse41" / "parity.json").read_text())["isa"] == prov["isa"]
    native = json.loads((tmp_path / "native" / "provenance.json").read_text())["isa"]
    assert native["requested"] is None and native["env"] == {}

    cmp = run_cli("compare", str(tmp_path / "native"), str(tmp_path / "sse41"), "-o", str(tmp_path / "cmp"))
    assert cmp.returncode == 0, cmp.stderr[-2000:]
    assert "A uncapped; B sse41 (ONEDNN_MAX_CPU_ISA=SSE41, OV_CPU_MAX_ISA=SSE41" in cmp.stdout
    assert "B sse41 (ONEDNN_MAX_CPU_ISA=SSE41" in (tmp_path / "cmp" / "compare.md").read_text()
    rows = {r["backend"]: r for r in json.loads((tmp_path / "cmp" / "compare.json").read_text())["same_backend"]}
    assert rows["onnxruntime-cpu-fp32"]["bitwise_share"] == 1.0  # MLAS has no switch: same kernels, one thread
    torch_rows = [r for name, r in rows.items() if name.startswith("torch-cpu-fp32")]
    assert torch_rows
    for r in torch_rows:  # another instruction set may change rounding, never beyond fp32's tolerance
        assert r["rel_l2"] <= tolerances()["fp32"]["rel_l2"] and r["top1_agreement"] == 1.0, r


def test_an_unknown_word_is_one_line_exit_2_and_writes_nothing(export_dir, tmp_path):
    r = run_cli("parity", str(export_dir), "--isa", "avx1024", "-o", str(tmp_path / "r"), "--save-outputs")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "unknown instruction set 'avx1024'" in r.stderr and "sse41, avx, avx2" in r.stderr
    assert not (tmp_path / "r").exists()
