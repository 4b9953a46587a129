"""`nfdeploy package`: a standard Triton model repository for Triton's own container, and its checks.

One model per ONNX file (`platform: "onnxruntime_onnx"`) and one per TensorRT engine
(`platform: "tensorrt_plan"`, the plan named for each compute capability it was built for); the int8
forms are models of their own. Every model: dynamic batching with a queue delay and no preferred
batch size (Triton's docs advise it only for TensorRT with one profile per batch size), one CPU
instance with ONNX Runtime's intra-op threads set (Triton's CPU default is 2 instances × all cores),
zero-data warm-up at batch 1 and the max batch, and the export's sha256 in its parameters.

The checks are Triton's as far as this machine can run them: every config.pbtxt parsed with protobuf
`text_format` into `model_config_pb2.ModelConfig` (an unknown field, enum value or type fails), then
what a parser cannot see: platform known to Triton, dims equal to the ONNX graph's (or the engine's
input), max batch within the engine profile, the named file present with the manifest's sha256.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from nfdeploy.artifacts import make_staging_dir, sha256_file
from nfdeploy.errors import UserError, require
from nfdeploy.export import load_manifest
from nfdeploy.parity import read_parity_rows
from nfdeploy.serve.server import model_name_of

# Triton's platform / backend names for the model files this repository holds.
PLATFORMS = {"onnxruntime_onnx": "model.onnx", "tensorrt_plan": "model.plan"}
KNOWN_BACKENDS = {"onnxruntime", "tensorrt", "python", "pytorch", "openvino", "tensorflow"}
ONNX_TO_TRITON = {1: "TYPE_FP32", 10: "TYPE_FP16", 16: "TYPE_BF16", 11: "TYPE_FP64", 7: "TYPE_INT64", 6: "TYPE_INT32"}
CONFIG = "config.pbtxt"


class RepositoryError(UserError, ValueError):
    """An export that cannot be packaged as asked; one line."""


def onnx_io(path: Path) -> dict[str, Any]:
    """Input and output (name, Triton dtype, dims without the batch) of an ONNX graph."""
    onnx = require("onnx", "onnx")
    graph = onnx.load(str(path), load_external_data=False).graph

    def one(v: Any) -> dict[str, Any]:
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        return {"name": v.name, "data_type": ONNX_TO_TRITON.get(t.elem_type, f"ONNX_{t.elem_type}"), "dims": dims[1:]}

    inits = {i.name for i in graph.initializer}
    return {"input": one(next(v for v in graph.input if v.name not in inits)), "output": one(graph.output[0])}


def _tensor(t: dict[str, Any]) -> str:
    return f'{{ name: "{t["name"]}" data_type: {t["data_type"]} dims: [ {", ".join(map(str, t["dims"]))} ] }}'


def config_text(name: str, platform: str, max_batch: int, io: dict[str, Any], delay_us: int,
                parameters: dict[str, str], cc_files: dict[str, str] | None = None) -> str:
    inp = io["input"]
    warm = [f'''  {{ name: "zeros_batch{b}" batch_size: {b} inputs {{ key: "{inp["name"]}" value: {{ data_type: {inp["data_type"]} '''
            f'''dims: [ {", ".join(map(str, inp["dims"]))} ] zero_data: true }} }} }}''' for b in sorted({1, max_batch})]
    params = [f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in parameters.items()]
    lines = [f'name: "{name}"', f'platform: "{platform}"', f"max_batch_size: {max_batch}",
             f"input [ {_tensor(inp)} ]", f"output [ {_tensor(io['output'])} ]",
             f"dynamic_batching {{ max_queue_delay_microseconds: {delay_us} }}"]
    if platform == "onnxruntime_onnx":
        lines.append("instance_group [ { kind: KIND_CPU count: 1 } ]")
    else:
        lines.append("instance_group [ { kind: KIND_GPU count: 1 } ]")
    lines.append(f'default_model_filename: "{PLATFORMS[platform]}"')
    for cc, f in (cc_files or {}).items():
        lines.append(f'cc_model_filenames {{ key: "{cc}" value: "{f}" }}')
    lines += params + ["model_warmup [", ",\n".join(warm), "]"]
    return "\n".join(lines) + "\n"


def package_export(export_dir: str | Path, out: str | Path, *, max_batch: int = 32, max_queue_delay_us: int = 1000,
                   threads: int | None = None) -> Path:
    """Write the repository to `out` (staged beside it, swapped in whole); returns `out`."""
    export_dir, out = Path(export_dir), Path(out)
    manifest = load_manifest(export_dir)
    base = model_name_of(manifest)
    rows = read_parity_rows(export_dir) or {}
    threads = threads or max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = make_staging_dir(out)
    try:
        for prec, entry in (manifest.get("onnx") or {}).items():
            name = base if prec == "fp32" else f"{base}_{prec.replace('-', '_')}"
            src = export_dir / entry["file"]
            params = {"intra_op_thread_count": str(threads), "inter_op_thread_count": "1",
                      "nfdeploy.export_file": entry["file"], "nfdeploy.sha256": entry["sha256"],
                      "nfdeploy.parity": rows.get(f"onnxruntime-cpu-{prec}", {}).get("status", "unchecked")}
            (staging / name / "1").mkdir(parents=True)
            shutil.copyfile(src, staging / name / "1" / PLATFORMS["onnxruntime_onnx"])
            (staging / name / CONFIG).write_text(config_text(name, "onnxruntime_onnx", max_batch, onnx_io(src),
                                                              max_queue_delay_us, params))
        for key, entry in (manifest.get("engines") or {}).items():
            name = f"{base}_trt_{key.replace('-', '_')}"
            ccs = entry.get("compute_capabilities") or ([entry["gpu"]["compute_capability"]] if isinstance(entry.get("gpu"), dict) else [])
            profile_max = min(p["max"] for p in entry["profiles"]) if entry.get("profiles") else 1
            io = onnx_io(export_dir / entry["onnx"]) if (export_dir / entry["onnx"]).is_file() else None
            if io is None:
                raise RepositoryError(f"engine {entry['file']}: its ONNX file {entry['onnx']} is not in {export_dir}")
            (staging / name / "1").mkdir(parents=True)
            shutil.copyfile(export_dir / entry["file"], staging / name / "1" / PLATFORMS["tensorrt_plan"])
            params = {"nfdeploy.export_file": entry["file"], "nfdeploy.sha256": entry["engine_sha256"],
                      "nfdeploy.flavour": f"{entry['flavour']} {entry['version']}"}
            (staging / name / CONFIG).write_text(config_text(
                name, "tensorrt_plan", min(max_batch, profile_max), io, max_queue_delay_us, params,
                {str(cc): PLATFORMS["tensorrt_plan"] for cc in ccs}))
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def parse_config(path: Path) -> Any:
    """config.pbtxt → model_config_pb2.ModelConfig; a text-format error names the line."""
    require("tritonclient.grpc", "serve")
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def check_model(model_dir: Path, manifest: dict[str, Any], export_dir: Path) -> list[str]:
    """Problems of one model dir (empty: it passes every check)."""
    from google.protobuf import text_format

    try:
        cfg = parse_config(model_dir / CONFIG)
    except text_format.ParseError as e:
        return [f"{CONFIG} does not parse as Triton's ModelConfig: {e}"]
    problems = []
    if cfg.name != model_dir.name:
        problems.append(f"name {cfg.name!r} is not the directory's {model_dir.name!r}")
    if cfg.platform not in PLATFORMS and cfg.backend not in KNOWN_BACKENDS:
        problems.append(f"platform {cfg.platform!r} / backend {cfg.backend!r} is not one Triton knows")
        return problems
    fname = cfg.default_model_filename or PLATFORMS.get(cfg.platform, "")
    files = {fname} | set(cfg.cc_model_filenames.values())
    shas = {e["sha256"] for e in (manifest.get("onnx") or {}).values()} | \
        {e["engine_sha256"] for e in (manifest.get("engines") or {}).values()}
    for f in sorted(files):
        p = model_dir / "1" / f
        if not p.is_file():
            problems.append(f"the file it names, 1/{f}, is missing")
        elif sha256_file(p) not in shas:
            problems.append(f"1/{f}: sha256 matches no file of the export's manifest")
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    src = export_dir / params.get("nfdeploy.export_file", "")
    if cfg.platform == "onnxruntime_onnx" and src.is_file():
        graph = onnx_io(src)
        want = {"input": [(graph["input"]["name"], graph["input"]["dims"])],
                "output": [(graph["output"]["name"], graph["output"]["dims"])]}
        for kind, tensors in (("input", cfg.input), ("output", cfg.output)):
            got = [(t.name, list(t.dims)) for t in tensors]
            if got != want[kind]:
                problems.append(f"{kind} {got} differs from the ONNX graph's {want[kind]}")
    if cfg.platform == "tensorrt_plan":
        entry = next((e for e in (manifest.get("engines") or {}).values() if e["file"] == params.get("nfdeploy.export_file")), None)
        if entry is None:
            problems.append("no engine of the manifest is named in its parameters")
        else:
            top = min(p["max"] for p in entry["profiles"]) if entry.get("profiles") else 1
            if cfg.max_batch_size > top:
                problems.append(f"max_batch_size {cfg.max_batch_size} is above the engine profile's max {top}")
            shape = [int(d) for d in entry["input"]["shape"][1:]]
            if list(cfg.input[0].dims) != shape:
                problems.append(f"input dims {list(cfg.input[0].dims)} differ from the engine's {shape}")
    for w in cfg.model_warmup:
        if w.batch_size > max(cfg.max_batch_size, 1):
            problems.append(f"warm-up {w.name!r} at batch {w.batch_size} is above max_batch_size {cfg.max_batch_size}")
    if cfg.dynamic_batching.preferred_batch_size:
        problems.append("preferred_batch_size is set (Triton advises it only for TensorRT with one profile per batch size)")
    return problems


def check_repository(repo: str | Path, export_dir: str | Path) -> dict[str, list[str]]:
    """{model name: problems} for every model dir of the repository."""
    repo, export_dir = Path(repo), Path(export_dir)
    manifest = load_manifest(export_dir)
    models = sorted(p for p in repo.iterdir() if p.is_dir())
    if not models:
        raise RepositoryError(f"{repo} holds no model directories")
    return {m.name: check_model(m, manifest, export_dir) for m in models}


def describe_repository(repo: str | Path) -> dict[str, dict[str, Any]]:
    """Every parsed config as a dict (protobuf's JSON form), for reports."""
    from google.protobuf import json_format

    return {p.name: json_format.MessageToDict(parse_config(p / CONFIG)) for p in sorted(Path(repo).iterdir()) if p.is_dir()}


__all__ = ["CONFIG", "KNOWN_BACKENDS", "PLATFORMS", "RepositoryError", "check_model", "check_repository",
           "config_text", "describe_repository", "onnx_io", "package_export", "parse_config"]
