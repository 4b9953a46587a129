"""`nfdeploy package`: the Triton model repository of an export, and its checks.

Two forms, one writer:

- **Python-backend** (the default; what `nfdeploy serve` serves): one model whose `model.py` runs the
  nfdeploy backend parity judged (nfdeploy.serve.python_model), with that backend's file, the export's
  manifest and, for torch backends, the run's weights inside its version dir. Triton's Python backend
  answers every request of a batch on its own. The bundled tritonserver has no ONNX Runtime or
  TensorRT backend, so this is how it runs any of them; a Triton container runs the same repository when
  `EXECUTION_ENV_PATH` names an environment with nfdeploy installed.
- **Native** (`native=True`): for Triton's own container: one `onnxruntime_onnx` model per ONNX file and
  one `tensorrt_plan` model per engine (the plan named for each compute capability it was built for).

Every model: dynamic batching without a preferred batch size (Triton advises it only for TensorRT with one
profile per batch size), a bounded queue, zero-data warm-up at batch 1 and the max batch, the export's
sha256 in its parameters. The checks parse every config.pbtxt into Triton's `ModelConfig` protobuf, then
check what a parser cannot see (files and their sha256, dims against the graph, profile limits); the real
server loading the repository is `load_check`.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nfdeploy.artifacts import MANIFEST, EngineEntry, Manifest, make_staging_dir, sha256_file
from nfdeploy.artifacts.run_dir import RUN_CONFIG
from nfdeploy.check.backends import REFERENCE, export_backends, manifest_source
from nfdeploy.errors import UserError, require
from nfdeploy.preprocess import PREPROCESSING_JSON
from nfdeploy.runtime.base import Backend
from nfdeploy.serve.choice import choose_backend, measured_batch_invariance, parity_verdict, saved_verdicts
from nfdeploy.serve.python_model import BATCH_OUTPUT, EXPORT_SUBDIR, RUN_SUBDIR
from nfdeploy.status import Status

MODEL_CONFIG = "config.pbtxt"
MODEL_VERSION = 1
# Triton's platform names for the native model files this repository holds.
PLATFORMS = {"onnxruntime_onnx": "model.onnx", "tensorrt_plan": "model.plan"}
PYTHON_BACKEND = "python"
KNOWN_BACKENDS = {"onnxruntime", "tensorrt", "python", "pytorch", "openvino", "tensorflow"}
ONNX_TO_TRITON = {
    1: "TYPE_FP32",
    2: "TYPE_UINT8",
    10: "TYPE_FP16",
    16: "TYPE_BF16",
    11: "TYPE_FP64",
    7: "TYPE_INT64",
    6: "TYPE_INT32",
}
# A queue of this many full batches by default: a closed loop of clients never holds more requests than it has
# clients, so 64 clients fit at --max-batch 2 and up; a burst beyond it is refused at once.
QUEUE_BATCHES = 32
MODEL_PY = (
    '"""Written by `nfdeploy package`: serves the nfdeploy backend named in config.pbtxt\'s parameters; needs\n'
    'nfdeploy in the stub\'s environment (EXECUTION_ENV_PATH)."""\n\n'
    "from nfdeploy.serve.python_model import TritonPythonModel  # noqa: F401\n"
)


class RepositoryError(UserError, ValueError):
    """An export that cannot be packaged as asked, or a repository that is not one; one line."""


@dataclass
class PackageOptions:
    backend: str | None = None  # None: the fastest backend that passed parity (serve.choice)
    max_batch: int = 32
    max_queue_delay_us: int = 0  # batches form from what queued while the model ran; more trades latency for size
    max_queue_size: int | None = None  # None: QUEUE_BATCHES × max_batch
    queue_timeout_us: int = 0  # a request queued longer is refused (0: no timeout)
    instances: int = 1
    threads: int | None = None  # per instance: ONNX Runtime / OpenVINO intra-op threads, torch's CPU threads
    batch_invariant: bool = False  # pad every executed batch to max_batch (unless parity measured it bitwise already)
    allow_unchecked: bool = False
    env_path: str | None = None  # EXECUTION_ENV_PATH (None: this venv, when running in one)
    native: bool = False

    def queue_size(self) -> int:
        return self.max_queue_size if self.max_queue_size is not None else QUEUE_BATCHES * self.max_batch

    def check(self) -> None:
        if self.max_batch < 1 or self.instances < 1:
            raise RepositoryError("--max-batch and --instances must be >= 1")
        if self.max_queue_delay_us < 0 or self.queue_timeout_us < 0 or self.queue_size() < 0:
            raise RepositoryError("--max-queue-delay-us, --queue-timeout-us and --max-queue-size must be >= 0")


@dataclass
class PackagedModel:
    name: str
    parameters: dict[str, str]
    notes: list[str] = field(default_factory=list)  # what a user should read: the choice, the padding


# ------------------------------------------------------------------------------------ config text
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


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"')


def config_text(
    name: str,
    kind: dict[str, str],
    max_batch: int,
    inputs: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
    opts: PackageOptions,
    parameters: dict[str, str],
    instance_kind: str = "KIND_CPU",
    cc_files: dict[str, str] | None = None,
) -> str:
    """config.pbtxt text. `kind`: {"backend": "python"} or {"platform": "onnxruntime_onnx", ...}."""
    inp = inputs[0]
    policy = f"max_queue_size: {opts.queue_size()}"
    if opts.queue_timeout_us:
        policy += f" timeout_action: REJECT default_timeout_microseconds: {opts.queue_timeout_us}"
    warm = [
        f"""  {{ name: "zeros_batch{b}" batch_size: {b} """
        f'''inputs {{ key: "{inp["name"]}" value: {{ data_type: {inp["data_type"]} '''
        f"""dims: [ {", ".join(map(str, inp["dims"]))} ] zero_data: true }} }} }}"""
        for b in sorted({1, max_batch})
    ]
    lines = [
        f'name: "{name}"',
        *(f'{k}: "{v}"' for k, v in kind.items()),
        f"max_batch_size: {max_batch}",
        f"input [ {', '.join(_tensor(t) for t in inputs)} ]",
        f"output [ {', '.join(_tensor(t) for t in outputs)} ]",
        f"dynamic_batching {{ max_queue_delay_microseconds: {opts.max_queue_delay_us} "
        f"default_queue_policy {{ {policy} }} }}",
        f"instance_group [ {{ kind: {instance_kind} count: {opts.instances} }} ]",
    ]
    if "platform" in kind:
        lines.append(f'default_model_filename: "{PLATFORMS[kind["platform"]]}"')
    for cc, f in (cc_files or {}).items():
        lines.append(f'cc_model_filenames {{ key: "{cc}" value: "{f}" }}')
    lines += [f'parameters {{ key: "{k}" value: {{ string_value: "{_escape(v)}" }} }}' for k, v in parameters.items()]
    lines += ["model_warmup [", ",\n".join(warm), "]"]
    return "\n".join(lines) + "\n"


def model_name_of(manifest: Manifest) -> str:
    """Triton model names allow letters, digits, dots, underscores and dashes."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(manifest.model or "model"))


def output_dims(manifest: Manifest, export_dir: Path) -> list[int]:
    for entry in manifest.onnx.values():
        if (export_dir / entry.file).is_file():
            return onnx_io(export_dir / entry.file)["output"]["dims"]
    classes = (manifest.source.model_config or {}).get("num_classes")
    if classes:
        return [int(classes)]
    raise RepositoryError(f"{export_dir}: no ONNX file and no model config tell the number of outputs")


def input_note(backend: Backend) -> str:
    """What a request carries, said in the model's parameters."""
    if backend.takes_pixels:
        return (
            "uint8 image pixels N x C x H x W (export/preprocessing.json: colour, resize, crop); the model "
            "normalizes them (4x smaller requests than float32)"
        )
    return "float32 normalized images N x C x H x W ((pixels / 255 - mean) / std, export/preprocessing.json)"


def profile_max(entry: EngineEntry) -> int:
    """The largest batch every optimization profile of an engine accepts (1 without profiles)."""
    return min(int(p["max"]) for p in entry.profiles) if entry.profiles else 1


def default_env_path() -> str | None:
    """This interpreter's venv (the Python backend activates it for the stub), or None outside a venv."""
    return sys.prefix if sys.prefix != sys.base_prefix and (Path(sys.prefix) / "bin" / "activate").is_file() else None


# ------------------------------------------------------------------------------- python backend
def select_served(export_dir: Path, opts: PackageOptions, log: Callable[[str], None]) -> tuple[Backend, Status, str]:
    """The backend to serve, its parity verdict and why it was chosen; refuses one that failed parity."""
    backends = export_backends(manifest_source(export_dir), compile=False)
    if opts.backend:
        name, why = opts.backend, "named by --backend"
    else:
        choice = choose_backend(export_dir, backends, opts.max_batch)
        name, why = choice.name, choice.reason
    picked = next((b for b in backends if b.name == name and b.name != REFERENCE), None)
    if picked is None:
        raise RepositoryError(
            f"--backend {name}: no such backend of this export; names: "
            f"{', '.join(b.name for b in backends if b.name != REFERENCE)}"
        )
    reason = picked.unavailable_reason()
    if reason:
        raise RepositoryError(f"--backend {name} cannot run here: {reason}")
    verdict = parity_verdict(export_dir, name)
    if verdict is Status.UNCHECKED:
        log(f"warning: no parity verdict for {name} (run `nfdeploy parity {export_dir}`); serving it as unchecked")
    elif verdict is not Status.PASS and not opts.allow_unchecked:
        raise RepositoryError(
            f"{name}: its parity verdict is {verdict}; refusing to serve it "
            "(--allow-unchecked serves it anyway and says so in the model's parameters)"
        )
    elif verdict is not Status.PASS:
        log(f"warning: serving {name} although its parity verdict is {verdict} (--allow-unchecked)")
    return picked, verdict, why


def padding_for(export_dir: Path, name: str, opts: PackageOptions) -> tuple[int, str]:
    """(rows every executed batch is padded to, what the model's parameters say about batch invariance)."""
    measured = measured_batch_invariance(export_dir, name)
    if measured and measured["bitwise"]:
        return 0, (
            f"bitwise batch-invariant as measured by parity (batches {measured['batches']} vs 1): no padding needed"
        )
    if not opts.batch_invariant:
        where = "parity measured outputs that change with the batch size" if measured else "not measured by parity"
        return 0, f"off: a response may depend on its batch-mates ({where}); --batch-invariant pads"
    return opts.max_batch, f"every executed batch padded to {opts.max_batch} rows"


def write_python_model(
    export_dir: Path, staging: Path, opts: PackageOptions, log: Callable[[str], None]
) -> PackagedModel:
    manifest = Manifest.read(export_dir, verify_files=False)
    backend, verdict, why = select_served(export_dir, opts, log)
    pad_to, invariance = padding_for(export_dir, backend.name, opts)
    name = model_name_of(manifest)
    version = staging / name / str(MODEL_VERSION)
    (version / EXPORT_SUBDIR).mkdir(parents=True)
    shutil.copyfile(export_dir / MANIFEST, version / EXPORT_SUBDIR / MANIFEST)
    if (export_dir / PREPROCESSING_JSON).is_file():  # how a client turns an image into the input
        shutil.copyfile(export_dir / PREPROCESSING_JSON, version / EXPORT_SUBDIR / PREPROCESSING_JSON)
    if backend.artifact is not None:
        artifact, digest = backend.artifact.name, sha256_file(backend.artifact)
        shutil.copyfile(backend.artifact, version / EXPORT_SUBDIR / artifact)
    else:  # torch: the run's weights and resolved config rebuild the model
        src = manifest.source
        run_dir = Path(src.run_dir) if Path(src.run_dir).is_dir() else (export_dir / src.run_dir_relative).resolve()
        (version / RUN_SUBDIR).mkdir()
        for f in (src.weights, RUN_CONFIG):
            shutil.copyfile(run_dir / f, version / RUN_SUBDIR / f)
        artifact, digest = f"{RUN_SUBDIR}/{src.weights}", sha256_file(version / RUN_SUBDIR / src.weights)
    (version / "model.py").write_text(MODEL_PY)
    env = opts.env_path if opts.env_path is not None else default_env_path()
    params = {
        **({"EXECUTION_ENV_PATH": env} if env else {}),
        "nfdeploy.backend": backend.name,
        "nfdeploy.check.parity": verdict.value,
        "nfdeploy.checked": "yes" if verdict is Status.PASS else "no",
        "nfdeploy.allow_unchecked": "yes" if opts.allow_unchecked and verdict is not Status.PASS else "no",
        "nfdeploy.chosen": why,
        "nfdeploy.artifact": artifact,
        "nfdeploy.artifact_sha256": digest,
        "nfdeploy.threads": str(opts.threads or ""),
        "nfdeploy.pad_to": str(pad_to),
        "nfdeploy.batch_invariance": invariance,
        "nfdeploy.input": input_note(backend),
    }
    c, h, w = backend.input_shape
    data_type = "TYPE_UINT8" if backend.takes_pixels else "TYPE_FP32"
    inputs = [{"name": manifest.input.name, "data_type": data_type, "dims": [c, h, w]}]
    outputs = [
        {"name": manifest.output_name, "data_type": "TYPE_FP32", "dims": output_dims(manifest, export_dir)},
        {"name": BATCH_OUTPUT, "data_type": "TYPE_INT32", "dims": [1]},
    ]
    (staging / name / MODEL_CONFIG).write_text(
        config_text(name, {"backend": PYTHON_BACKEND}, opts.max_batch, inputs, outputs, opts, params)
    )
    return PackagedModel(name, params, [f"{backend.name}: {why}", f"batch invariance: {invariance}"])


# ------------------------------------------------------------------------------------ native
def write_native_models(export_dir: Path, staging: Path, opts: PackageOptions) -> list[PackagedModel]:
    manifest = Manifest.read(export_dir)
    base = model_name_of(manifest)
    verdicts = saved_verdicts(export_dir) or {}
    threads = opts.threads or (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )
    made = []
    graphs = {p: (e, f"onnxruntime-cpu-{p}") for p, e in manifest.onnx.items()}
    if manifest.image_input is not None:  # the image-input graph: uint8 requests
        graphs["uint8"] = (manifest.image_input, "onnxruntime-cpu-fp32-uint8")
    for prec, (entry, checked_as) in graphs.items():
        name = base if prec == "fp32" else f"{base}_{prec.replace('-', '_')}"
        src = export_dir / entry.file
        params = {
            "intra_op_thread_count": str(threads),
            "inter_op_thread_count": "1",
            "nfdeploy.export_file": entry.file,
            "nfdeploy.sha256": entry.sha256,
            "nfdeploy.check.parity": verdicts.get(checked_as, Status.UNCHECKED).value,
        }
        (staging / name / "1").mkdir(parents=True)
        shutil.copyfile(src, staging / name / "1" / PLATFORMS["onnxruntime_onnx"])
        io = onnx_io(src)
        (staging / name / MODEL_CONFIG).write_text(
            config_text(
                name, {"platform": "onnxruntime_onnx"}, opts.max_batch, [io["input"]], [io["output"]], opts, params
            )
        )
        made.append(PackagedModel(name, params))
    for key, entry in manifest.engines.items():
        name = f"{base}_trt_{key.replace('-', '_')}"
        ccs = entry.compute_capabilities or ([entry.gpu["compute_capability"]] if isinstance(entry.gpu, dict) else [])
        if not entry.onnx or not (export_dir / entry.onnx).is_file():
            raise RepositoryError(f"engine {entry.file}: its ONNX file {entry.onnx} is not in {export_dir}")
        io = onnx_io(export_dir / entry.onnx)
        (staging / name / "1").mkdir(parents=True)
        shutil.copyfile(export_dir / entry.file, staging / name / "1" / PLATFORMS["tensorrt_plan"])
        params = {
            "nfdeploy.export_file": entry.file,
            "nfdeploy.sha256": entry.engine_sha256,
            "nfdeploy.flavour": f"{entry.flavour} {entry.version}",
        }
        (staging / name / MODEL_CONFIG).write_text(
            config_text(
                name,
                {"platform": "tensorrt_plan"},
                min(opts.max_batch, profile_max(entry)),
                [io["input"]],
                [io["output"]],
                opts,
                params,
                "KIND_GPU",
                {str(cc): PLATFORMS["tensorrt_plan"] for cc in ccs},
            )
        )
        made.append(PackagedModel(name, params))
    return made


def package_export(
    export_dir: str | Path, out: str | Path, opts: PackageOptions | None = None, *, log: Callable[[str], None] = print
) -> list[PackagedModel]:
    """Write the repository to `out` (staged beside it, swapped in whole: a failure leaves `out` as it was)."""
    export_dir, out, opts = Path(export_dir), Path(out), opts or PackageOptions()
    opts.check()
    if not (export_dir / MANIFEST).is_file():
        raise RepositoryError(f"{export_dir} is not an export dir (no {MANIFEST})")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = make_staging_dir(out)
    try:
        made = (
            write_native_models(export_dir, staging, opts)
            if opts.native
            else [write_python_model(export_dir, staging, opts, log)]
        )
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return made


# ------------------------------------------------------------------------------------- checks
def parse_config(path: Path) -> Any:
    """config.pbtxt → model_config_pb2.ModelConfig; a text-format error names the line."""
    require("tritonclient.grpc", "serve")
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def config_parameters(cfg: Any) -> dict[str, str]:
    return {k: v.string_value for k, v in cfg.parameters.items()}


def check_python_model(model_dir: Path, cfg: Any, export_dir: Path | None) -> list[str]:
    params, version = config_parameters(cfg), model_dir / str(MODEL_VERSION)
    problems = []
    if not (version / "model.py").is_file() or (version / "model.py").read_text() != MODEL_PY:
        problems.append(f"{MODEL_VERSION}/model.py is missing or not the one `nfdeploy package` writes")
    missing = [k for k in ("nfdeploy.backend", "nfdeploy.artifact", "nfdeploy.artifact_sha256") if not params.get(k)]
    if missing:
        return problems + [f"parameters {missing} are missing"]
    packaged = version / EXPORT_SUBDIR / MANIFEST
    if not packaged.is_file():
        return problems + [f"{packaged.relative_to(model_dir)} is missing"]
    manifest = Manifest.read(packaged.parent, verify_files=False)
    if export_dir is not None and manifest != Manifest.read(export_dir, verify_files=False):
        problems.append(f"its manifest differs from {export_dir}'s")
    art = params["nfdeploy.artifact"]
    path = version / (art if art.startswith(RUN_SUBDIR + "/") else f"{EXPORT_SUBDIR}/{art}")
    listed = {**manifest.artifact_sha256s(), f"{RUN_SUBDIR}/{manifest.source.weights}": manifest.source.weights_sha256}
    if not path.is_file():
        problems.append(f"the file it serves, {path.relative_to(model_dir)}, is missing")
    elif (
        sha256_file(path) != params["nfdeploy.artifact_sha256"] or listed.get(art) != params["nfdeploy.artifact_sha256"]
    ):
        problems.append(f"{path.relative_to(model_dir)}: sha256 differs from the manifest's")
    shape = list(manifest.input.chw)
    if not cfg.input or list(cfg.input[0].dims) != shape:
        problems.append(f"input dims {[list(t.dims) for t in cfg.input]} differ from the export's {shape}")
    if BATCH_OUTPUT not in [t.name for t in cfg.output]:
        problems.append(f"output {BATCH_OUTPUT!r} is missing")
    env = params.get("EXECUTION_ENV_PATH")
    if env and "$$" not in env and not (Path(env) / "bin" / "activate").is_file() and not Path(env).is_file():
        problems.append(f"EXECUTION_ENV_PATH {env} is neither an environment with bin/activate nor an archive")
    pad = params.get("nfdeploy.pad_to") or "0"
    if not pad.isdigit() or int(pad) > cfg.max_batch_size:
        problems.append(f"nfdeploy.pad_to {pad!r} is not a batch size within max_batch_size {cfg.max_batch_size}")
    return problems


def check_native_model(model_dir: Path, cfg: Any, export_dir: Path | None) -> list[str]:
    if export_dir is None:
        return ["a native model is checked against its export: pass the export dir"]
    manifest = Manifest.read(export_dir)
    problems = []
    fname = cfg.default_model_filename or PLATFORMS.get(cfg.platform, "")
    files = {fname} | set(cfg.cc_model_filenames.values())
    shas = set(manifest.artifact_sha256s().values())
    for f in sorted(files):
        p = model_dir / str(MODEL_VERSION) / f
        if not p.is_file():
            problems.append(f"the file it names, {MODEL_VERSION}/{f}, is missing")
        elif sha256_file(p) not in shas:
            problems.append(f"{MODEL_VERSION}/{f}: sha256 matches no file of the export's manifest")
    params = config_parameters(cfg)
    src = export_dir / params.get("nfdeploy.export_file", "")
    if cfg.platform == "onnxruntime_onnx" and src.is_file():
        graph = onnx_io(src)
        want = {
            "input": [(graph["input"]["name"], graph["input"]["dims"])],
            "output": [(graph["output"]["name"], graph["output"]["dims"])],
        }
        for kind, tensors in (("input", cfg.input), ("output", cfg.output)):
            got = [(t.name, list(t.dims)) for t in tensors]
            if got != want[kind]:
                problems.append(f"{kind} {got} differs from the ONNX graph's {want[kind]}")
    if cfg.platform == "tensorrt_plan":
        entry = next((e for e in manifest.engines.values() if e.file == params.get("nfdeploy.export_file")), None)
        if entry is None:
            problems.append("no engine of the manifest is named in its parameters")
        else:
            top = profile_max(entry)
            if cfg.max_batch_size > top:
                problems.append(f"max_batch_size {cfg.max_batch_size} is above the engine profile's max {top}")
            shape = list(manifest.input.chw)  # the engine was built from the export's graph, of this shape
            if list(cfg.input[0].dims) != shape:
                problems.append(f"input dims {list(cfg.input[0].dims)} differ from the engine's {shape}")
    return problems


def check_model_dir(model_dir: Path, export_dir: Path | None = None) -> list[str]:
    """Problems of one model dir (empty: it passes every check)."""
    from google.protobuf import text_format

    try:
        cfg = parse_config(model_dir / MODEL_CONFIG)
    except text_format.ParseError as e:
        return [f"{MODEL_CONFIG} does not parse as Triton's ModelConfig: {e}"]
    problems = []
    if cfg.name != model_dir.name:
        problems.append(f"name {cfg.name!r} is not the directory's {model_dir.name!r}")
    if cfg.backend == PYTHON_BACKEND:
        problems += check_python_model(model_dir, cfg, export_dir)
    elif cfg.platform in PLATFORMS:
        problems += check_native_model(model_dir, cfg, export_dir)
    else:
        return problems + [f"platform {cfg.platform!r} / backend {cfg.backend!r} is not one Triton knows"]
    for w in cfg.model_warmup:
        if w.batch_size > max(cfg.max_batch_size, 1):
            problems.append(f"warm-up {w.name!r} at batch {w.batch_size} is above max_batch_size {cfg.max_batch_size}")
    if cfg.dynamic_batching.preferred_batch_size:
        problems.append(
            "preferred_batch_size is set (Triton advises it only for TensorRT with one profile per batch size)"
        )
    return problems


def model_dirs(repo: str | Path) -> list[Path]:
    repo = Path(repo)
    models = sorted(p for p in repo.iterdir() if p.is_dir() and (p / MODEL_CONFIG).is_file()) if repo.is_dir() else []
    if not models:
        raise RepositoryError(f"{repo} is not a Triton model repository (no MODEL/{MODEL_CONFIG} in it)")
    return models


def check_repository(repo: str | Path, export_dir: str | Path | None = None) -> dict[str, list[str]]:
    """{model name: problems} for every model dir of the repository (against `export_dir` when given)."""
    export = Path(export_dir) if export_dir is not None else None
    return {m.name: check_model_dir(m, export) for m in model_dirs(repo)}


def is_python_repository(repo: str | Path) -> bool:
    return all(parse_config(m / MODEL_CONFIG).backend == PYTHON_BACKEND for m in model_dirs(repo))


def describe_repository(repo: str | Path) -> dict[str, dict[str, Any]]:
    """Every parsed config as a dict (protobuf's JSON form), for reports."""
    from google.protobuf import json_format

    return {p.name: json_format.MessageToDict(parse_config(p / MODEL_CONFIG)) for p in model_dirs(repo)}


__all__ = [
    "MODEL_CONFIG",
    "KNOWN_BACKENDS",
    "MODEL_PY",
    "MODEL_VERSION",
    "PLATFORMS",
    "PYTHON_BACKEND",
    "QUEUE_BATCHES",
    "PackageOptions",
    "PackagedModel",
    "RepositoryError",
    "check_model_dir",
    "check_repository",
    "config_parameters",
    "config_text",
    "describe_repository",
    "is_python_repository",
    "model_dirs",
    "model_name_of",
    "onnx_io",
    "output_dims",
    "package_export",
    "parse_config",
]
