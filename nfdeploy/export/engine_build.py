"""Build TensorRT engines from the exported ONNX variants (library; no CLI here).

Two flavours share one builder/parser API: `tensorrt` (TensorRT 10.12+ / 11, needs a CUDA GPU to
build, installed from NVIDIA's index) and `tensorrt-rtx` (TensorRT-RTX, module tensorrt_rtx, on PyPI, builds
ahead of time *without* a GPU for a list of target compute capabilities; its engines do not run on Hopper).

Networks are strongly typed: precision comes from the ONNX variant (model.onnx fp32,
model.fp16.onnx, model.bf16.onnx), never from builder flags (TensorRT 11 removed FP16/INT8 flags and
weak typing; TensorRT-RTX networks are strongly typed by default). The only math-mode switch left is
TF32, set on or off explicitly and recorded.

The TensorRT import is lazy: nothing here imports a TensorRT flavour until a function needs it.
"""

from __future__ import annotations

import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nfdeploy.artifacts import atomic_path, atomic_write_bytes, sha256_file
from nfdeploy.errors import MissingExtraError, one_line
from nfdeploy.machine import cuda_gpu
from nfdeploy.precision import PRECISIONS
from nfdeploy.runtime.tensorrt import import_tensorrt
from nfdeploy.status import Status

INPUT_NAME, OUTPUT_NAME = "input", "logits"
# The precisions with an engine file in the precision table (int8-ort is ONNX Runtime's form only).
ENGINE_PRECISIONS = tuple(p for p, v in PRECISIONS.items() if v.engine_file)
# TensorRT-RTX targets skipped by default: Turing (SM 7.5) is opt-in per NVIDIA (a portable engine
# that includes it is slower everywhere); Hopper (9.x) is not an RTX target at all.
RTX_DEFAULT_EXCLUDE = {"SM75"}
RTX_TIMING_CACHE_NOTE = (
    "TensorRT-RTX: timing-cache operations are no-ops (deprecated since RTX 1.2; the "
    "ahead-of-time build does no autotuning) and may force a GPU query; not used"
)


class EngineBuildError(RuntimeError):
    """The ONNX file did not parse or the builder produced no engine. The message is one line;
    `.errors` holds one dict per parser/builder error: {"node", "op", "message"} (+ "code")."""

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.errors: list[dict[str, Any]] = list(errors or [])


@dataclass(frozen=True)
class BatchProfile:
    """One optimization profile on the batch dimension: min <= opt <= max."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        vals = (self.min, self.opt, self.max)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
            raise ValueError(f"batch profile needs integers, got {vals}")
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"batch profile {self.min}:{self.opt}:{self.max} must satisfy 1 <= min <= opt <= max")

    @classmethod
    def parse(cls, text: str) -> BatchProfile:
        """ "1:8:32" -> BatchProfile(1, 8, 32); "8" -> BatchProfile(8, 8, 8)."""
        parts = str(text).strip().split(":")
        if len(parts) == 1:
            parts = parts * 3
        if len(parts) != 3:
            raise ValueError(f"batch profile {text!r} must be MIN:OPT:MAX (e.g. 1:8:32) or a single batch size")
        try:
            lo, opt, hi = (int(p) for p in parts)
        except ValueError:
            raise ValueError(f"batch profile {text!r} must be three integers MIN:OPT:MAX (e.g. 1:8:32)") from None
        return cls(lo, opt, hi)

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"


@dataclass
class TrtBuildOptions:
    flavour: str = "auto"
    profiles: tuple[BatchProfile, ...] = (BatchProfile(1, 8, 32),)
    timing_cache: Path | None = None  # persistent file; TensorRT only (a no-op in TensorRT-RTX, not used there)
    optimization_level: int = 3  # builder_optimization_level 0..5
    tf32: bool = True
    workspace_mb: int | None = None
    detailed_profiling: bool = True
    # TensorRT-RTX targets, e.g. ("8.6", "SM89", "120"); None: every SM the installed RTX knows except
    # Turing (SM 7.5, opt-in). Ignored by TensorRT proper, which builds for the GPU it runs on.
    compute_capabilities: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        self.profiles = tuple(p if isinstance(p, BatchProfile) else BatchProfile.parse(p) for p in self.profiles)
        if not self.profiles:
            raise ValueError("at least one batch profile is needed")
        if not 0 <= int(self.optimization_level) <= 5:
            raise ValueError(f"optimization_level {self.optimization_level} outside 0..5")
        if self.workspace_mb is not None and self.workspace_mb <= 0:
            raise ValueError(f"workspace_mb must be positive, got {self.workspace_mb}")
        if self.timing_cache is not None:
            self.timing_cache = Path(self.timing_cache)
        if self.compute_capabilities is not None:
            self.compute_capabilities = tuple(self.compute_capabilities)
            if not self.compute_capabilities:
                raise ValueError("compute_capabilities is empty; leave it None for the default set")


# ---------------------------------------------------------------------------------------- helpers


def cc_to_str(name: str) -> str:
    """ "SM86" -> "8.6", "SM120" -> "12.0"."""
    digits = name.upper().removeprefix("SM")
    return f"{digits[:-1]}.{digits[-1]}"


def _cc_enum_name(text: str) -> str:
    """ "8.6" | "86" | "sm_86" | "SM86" | (8, 6) -> "SM86"."""
    if isinstance(text, (tuple, list)):
        return f"SM{int(text[0])}{int(text[1])}"
    t = str(text).strip().upper().replace("SM_", "").replace("SM", "")
    if "." in t:
        major, minor = t.split(".", 1)
        t = f"{int(major)}{int(minor)}"
    if not t.isdigit():
        raise ValueError(f"not a compute capability: {text!r} (use e.g. 8.6 or SM86)")
    return f"SM{t}"


def rtx_supported_ccs(trt) -> list[str]:
    """The SM targets the installed TensorRT-RTX's ComputeCapability enum offers, e.g. ["SM75", "SM80", ...]."""
    names = [n for n in getattr(trt.ComputeCapability, "__members__", {}) if n.startswith("SM")]
    return sorted(names, key=lambda n: (int(n[2:-1]), int(n[-1])))


def default_rtx_ccs(trt) -> list[str]:
    return [n for n in rtx_supported_ccs(trt) if n not in RTX_DEFAULT_EXCLUDE and not n.startswith("SM9")]


def _gpu_info() -> dict[str, Any] | None:
    g = cuda_gpu()
    return None if g is None else {"gpu": g["name"], "compute_capability": g["compute_capability"]}


def _parser_errors(parser) -> list[dict[str, Any]]:
    out = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        row: dict[str, Any] = {"node": None, "op": None, "message": ""}
        for key, getter in (
            ("node", "node_name"),
            ("op", "node_operator"),
            ("message", "desc"),
            ("code", "code"),
            ("node_index", "node"),
        ):
            fn = getattr(e, getter, None)
            if fn is None:
                continue
            try:
                val = fn()
            except Exception:  # noqa: BLE001 - optional getters differ between parser versions
                continue
            row[key] = getattr(val, "name", val) if key == "code" else val
        row["node"] = row["node"] or None
        row["op"] = row["op"] or None
        row["message"] = one_line(row["message"] or "unknown parser error", 500)
        out.append(row)
    return out


def _make_logger(trt):
    """An ILogger that keeps errors/warnings (for error messages and the build record), printing nothing."""

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self.warnings: list[str] = []

        def log(self, severity, msg):
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(one_line(msg, 500))
            elif severity == trt.ILogger.Severity.WARNING:
                self.warnings.append(one_line(msg, 500))

    return _Logger()


def load_timing_cache(config, path: Path | None) -> tuple[Any, dict[str, Any]]:
    """config.create_timing_cache from `path` (empty when absent/unreadable) and set it on the config."""
    info: dict[str, Any] = {"path": str(path) if path else None, "supported": True, "loaded": False, "loaded_bytes": 0}
    blob = b""
    if path is not None and Path(path).is_file():
        blob = Path(path).read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            cache = config.create_timing_cache(blob) if blob else None
        except Exception:  # noqa: BLE001 - a corrupt cache file must not stop the build
            cache = None
        if blob and cache is None:
            info["note"] = f"timing cache {path} was not accepted (other TensorRT version or corrupt); starting empty"
        if cache is None:
            cache = config.create_timing_cache(b"")
        else:
            info.update(loaded=True, loaded_bytes=len(blob))
        if not config.set_timing_cache(cache, False):
            info.update(loaded=False, note=f"timing cache {path} mismatches this TensorRT/GPU; starting empty")
            cache = config.create_timing_cache(b"")
            config.set_timing_cache(cache, True)
    return cache, info


def save_timing_cache(config, cache, path: Path, info: dict[str, Any]) -> dict[str, Any]:
    """Serialize the config's timing cache back to `path` atomically; records saved bytes / updated."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        current = config.get_timing_cache() if hasattr(config, "get_timing_cache") else None
        blob = bytes((current or cache).serialize())
    old = Path(path).read_bytes() if Path(path).is_file() else None
    if blob != old:
        atomic_write_bytes(path, blob)
    info.update(saved_bytes=len(blob), updated=blob != old)
    return info


def _network_dtypes(network) -> dict[str, int]:
    counts: Counter = Counter()
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.num_outputs:
            counts[getattr(layer.get_output(0).dtype, "name", str(layer.get_output(0).dtype))] += 1
    return dict(sorted(counts.items()))


# ---------------------------------------------------------------------------------------------- build


@dataclass
class _Toolchain:
    """The TensorRT flavour a build uses, its version, the GPU here (None: none) and the build's logger."""

    trt: Any
    flavour: str
    version: str
    gpu: dict[str, Any] | None
    logger: Any = None

    def __str__(self) -> str:
        return f"{self.flavour} {self.version}"


@dataclass
class _Network:
    """A parsed network, its input's dims, and what the build record says of it."""

    network: Any
    in_dims: tuple[int, ...]
    strongly_typed: bool
    layers: int
    layer_types: dict[str, int]
    layer_output_dtypes: dict[str, int]


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    precision: str,
    input_shape: tuple[int, int, int],
    opts: TrtBuildOptions | None = None,
) -> dict[str, Any]:
    """Parse `onnx_path` into a strongly typed network and build a serialized engine to `engine_path`
    (written atomically: a failure never leaves a partial file). Returns the build record."""
    opts = opts or TrtBuildOptions()
    if precision not in ENGINE_PRECISIONS:
        raise ValueError(f"precision {precision!r} has no TensorRT engine; choose from {list(ENGINE_PRECISIONS)}")
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    chw = tuple(int(v) for v in input_shape)
    tc = _toolchain(opts.flavour)
    if not onnx_path.is_file():
        raise EngineBuildError(f"ONNX file not found: {onnx_path}")
    t0 = time.perf_counter()
    tc.logger = _make_logger(tc.trt)
    builder = tc.trt.Builder(tc.logger)
    net = _parse_network(tc, builder, onnx_path, chw, opts.profiles)
    parse_seconds = time.perf_counter() - t0
    config = builder.create_builder_config()
    settings = _configure(tc, builder, config, chw, opts, net.in_dims)
    device = _target_devices(tc, config, opts.compute_capabilities)
    cache, timing_cache = _attach_timing_cache(tc, config, opts.timing_cache)
    build_seconds = _build_to_file(tc, builder, net.network, config, engine_path, f"{onnx_path.name} ({precision})")
    if cache is not None:
        save_timing_cache(config, cache, opts.timing_cache, timing_cache)
    return {
        "flavour": tc.flavour,
        "version": tc.version,
        "precision": precision,
        "onnx": onnx_path.name,
        "engine": engine_path.name,
        "input": {"name": INPUT_NAME, "shape": ["batch", *chw]},
        "profiles": [asdict(p) for p in opts.profiles],
        "strongly_typed": net.strongly_typed,
        **settings,
        "workspace_mb": opts.workspace_mb,
        "parse_seconds": parse_seconds,
        "build_seconds": build_seconds,
        "engine_bytes": engine_path.stat().st_size,
        "engine_sha256": sha256_file(engine_path),
        "network_layers": net.layers,
        "layer_types": net.layer_types,
        "layer_output_dtypes": net.layer_output_dtypes,
        "timing_cache": timing_cache,
        **device,
        "builder_warnings": tc.logger.warnings[:20],
    }


def _toolchain(flavour: str) -> _Toolchain:
    """The flavour asked for; "auto" without a GPU falls back to TensorRT-RTX, which builds without one."""
    trt, name = import_tensorrt(flavour)
    gpu = _gpu_info()
    if flavour == "auto" and name == "tensorrt" and gpu is None:
        try:  # TensorRT proper cannot build without a GPU; TensorRT-RTX can
            trt, name = import_tensorrt("tensorrt-rtx")
        except MissingExtraError:
            pass
    if name == "tensorrt" and gpu is None:
        raise EngineBuildError(
            "TensorRT needs a CUDA GPU to build an engine and none is visible; "
            "TensorRT-RTX (flavour tensorrt-rtx) builds without one"
        )
    return _Toolchain(trt, name, str(trt.__version__), gpu)


def _parse_network(
    tc: _Toolchain, builder, onnx_path: Path, chw: tuple[int, ...], profiles: tuple[BatchProfile, ...]
) -> _Network:
    """The strongly typed network of the ONNX file, checked to be an nfdeploy export of shape (batch, *chw)
    that the profiles fit."""
    flag_enum = tc.trt.NetworkDefinitionCreationFlag
    # TensorRT 10.x: strong typing is opt-in. TensorRT 11: always on, the flag deprecated and ignored.
    # TensorRT-RTX: the default (the flag is accepted).
    net_flags = 0
    if hasattr(flag_enum, "STRONGLY_TYPED") and not (tc.flavour == "tensorrt" and int(tc.version.split(".")[0]) >= 11):
        net_flags |= 1 << int(flag_enum.STRONGLY_TYPED)
    network = builder.create_network(net_flags)
    parser = tc.trt.OnnxParser(network, tc.logger)
    if not parser.parse_from_file(str(onnx_path)) or parser.num_errors:
        errors = _parser_errors(parser) or [{"node": None, "op": None, "message": m} for m in tc.logger.errors]
        first = errors[0] if errors else {"message": "unknown error"}
        where = f" at node {first['node']} ({first['op']})" if first.get("node") else ""
        raise EngineBuildError(
            f"{tc} could not parse {onnx_path.name}: {len(errors)} error(s); first{where}: {first['message'][:240]}",
            errors,
        )
    inputs = {network.get_input(i).name: network.get_input(i) for i in range(network.num_inputs)}
    if network.num_layers == 0 or INPUT_NAME not in inputs or network.num_outputs == 0:
        raise EngineBuildError(
            f"{onnx_path.name} parsed into an empty or foreign network ({network.num_layers} "
            f"layers, inputs {sorted(inputs)}); expected input {INPUT_NAME!r} of an nfdeploy export",
            [{"node": None, "op": None, "message": "no usable network in the ONNX file"}],
        )
    in_dims = tuple(inputs[INPUT_NAME].shape)
    if len(in_dims) != 4 or any(d not in (-1, want) for d, want in zip(in_dims[1:], chw)):
        raise EngineBuildError(
            f"{onnx_path.name}: input {INPUT_NAME!r} has shape {in_dims}, expected (batch, {', '.join(map(str, chw))})"
        )
    if in_dims[0] != -1 and any((p.min, p.max) != (in_dims[0], in_dims[0]) for p in profiles):
        raise EngineBuildError(
            f"{onnx_path.name}: batch dimension is fixed at {in_dims[0]}; profiles "
            f"{[str(p) for p in profiles]} need a dynamic batch"
        )
    layers = int(network.num_layers)
    return _Network(
        network,
        in_dims,
        strongly_typed=bool(
            network.get_flag(flag_enum.STRONGLY_TYPED) if hasattr(flag_enum, "STRONGLY_TYPED") else True
        ),
        layers=layers,
        layer_types=dict(sorted(Counter(network.get_layer(i).type.name for i in range(layers)).items())),
        layer_output_dtypes=_network_dtypes(network),
    )


def _configure(
    tc: _Toolchain, builder, config, chw: tuple[int, ...], opts: TrtBuildOptions, in_dims: tuple[int, ...]
) -> dict[str, Any]:
    """Optimization profiles on the batch dimension, TF32 (set or cleared, never left implicit), the
    optimization level, the workspace and the profiling verbosity; returns what the record says of them."""
    trt = tc.trt
    for p in opts.profiles:
        prof = builder.create_optimization_profile()
        prof.set_shape(INPUT_NAME, (p.min, *chw), (p.opt, *chw), (p.max, *chw))
        if config.add_optimization_profile(prof) < 0:
            raise EngineBuildError(f"optimization profile {p} was rejected for input {INPUT_NAME!r} {in_dims}")
    if hasattr(trt.BuilderFlag, "TF32"):
        (config.set_flag if opts.tf32 else config.clear_flag)(trt.BuilderFlag.TF32)
        tf32 = {
            "requested": opts.tf32,
            "flag": "set" if opts.tf32 else "cleared",
            "effective": bool(config.get_flag(trt.BuilderFlag.TF32)),
        }
    else:
        tf32 = {"requested": opts.tf32, "flag": f"absent: {tc} has no BuilderFlag.TF32", "effective": None}
    opt_level = None
    if hasattr(config, "builder_optimization_level"):
        config.builder_optimization_level = int(opts.optimization_level)
        opt_level = int(config.builder_optimization_level)
    if opts.workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace_mb) << 20)
    if opts.detailed_profiling:
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    profiling = getattr(config.profiling_verbosity, "name", str(config.profiling_verbosity))
    return {"tf32": tf32, "optimization_level": opt_level, "profiling_verbosity": profiling}


def _target_devices(tc: _Toolchain, config, requested: tuple[str, ...] | None) -> dict[str, Any]:
    """The compute capabilities the engine targets: TensorRT-RTX's requested (or default) list, set on the
    config; TensorRT proper's is the GPU it builds on."""
    gpu = tc.gpu
    device: dict[str, Any] = {
        "built_without_gpu": gpu is None,
        "gpu": gpu["gpu"] if gpu else None,
        "gpu_compute_capability": gpu["compute_capability"] if gpu else None,
    }
    if tc.flavour != "tensorrt-rtx":
        return {
            **device,
            "compute_capabilities": [gpu["compute_capability"]],
            "compute_capability_source": "the GPU it was built on",
        }
    supported = rtx_supported_ccs(tc.trt)
    if requested is not None:
        targets = [_cc_enum_name(x) for x in requested]
        bad = [x for x in targets if x not in supported]
        if bad:
            raise ValueError(
                f"compute capabilities {[cc_to_str(b) for b in bad]} not supported by "
                f"TensorRT-RTX {tc.version} (supported: {[cc_to_str(s) for s in supported]})"
            )
        cc_source = "requested"
    else:
        targets = default_rtx_ccs(tc.trt)
        cc_source = f"default: every SM of this TensorRT-RTX except {sorted(RTX_DEFAULT_EXCLUDE)} (Turing is opt-in)"
    targets = list(dict.fromkeys(targets))
    config.num_compute_capabilities = len(targets)
    for i, name in enumerate(targets):
        if not config.set_compute_capability(getattr(tc.trt.ComputeCapability, name), i):
            raise EngineBuildError(f"TensorRT-RTX rejected target compute capability {cc_to_str(name)}")
    device.update(
        compute_capabilities=[cc_to_str(n) for n in targets],
        compute_capability_source=cc_source,
        supported_compute_capabilities=[cc_to_str(s) for s in supported],
    )
    if gpu is not None and gpu["compute_capability"] not in device["compute_capabilities"]:
        device["note"] = (
            f"the GPU here ({gpu['gpu']}, CC {gpu['compute_capability']}) is not among the "
            "engine's targets: it cannot run this engine"
        )
    return device


def _attach_timing_cache(tc: _Toolchain, config, path: Path | None) -> tuple[Any, dict[str, Any]]:
    """The persistent timing cache loaded onto the config, where the flavour has one (None: not used),
    with the record of what happened to it."""
    if path is None:
        return None, {"path": None, "used": False}
    if tc.flavour == "tensorrt-rtx":
        return None, {"path": str(path), "supported": False, "used": False, "note": RTX_TIMING_CACHE_NOTE}
    if not hasattr(config, "create_timing_cache"):
        return None, {"path": str(path), "supported": False, "used": False, "note": f"{tc} has no timing-cache API"}
    cache, info = load_timing_cache(config, path)
    info["used"] = True
    return cache, info


def _build_to_file(tc: _Toolchain, builder, network, config, engine_path: Path, what: str) -> float:
    """Build the serialized engine and write it atomically; returns the build's seconds."""
    t1 = time.perf_counter()
    try:
        serialized = builder.build_serialized_network(network, config)
    except Exception as e:  # noqa: BLE001 - bindings raise plain RuntimeError/TypeError on builder failure
        serialized, tc.logger.errors = None, tc.logger.errors + [one_line(e, with_type=False)]
    build_seconds = time.perf_counter() - t1
    if serialized is None or serialized.nbytes == 0:
        errs = [{"node": None, "op": None, "message": m} for m in tc.logger.errors] or [
            {"node": None, "op": None, "message": "build_serialized_network returned no engine"}
        ]
        raise EngineBuildError(f"{tc} failed to build an engine from {what}: {errs[0]['message'][:240]}", errs)
    with atomic_path(engine_path) as tmp:
        with open(tmp, "wb") as f:
            f.write(memoryview(serialized))
    return build_seconds


def inspect_engine(
    engine_path: str | Path,
    record: dict[str, Any] | None = None,
    flavour: str = "auto",
    out_json: str | Path | None = None,
) -> dict[str, Any]:
    """What is known about an engine: its build record (from the manifest) and, where a CUDA GPU is
    present, the engine inspector's per-layer JSON (written to `out_json`) and the fused layer count.
    Deserializing an engine needs a GPU; without one the inspector part is reported as skipped."""
    import json

    engine_path = Path(engine_path)
    if not engine_path.is_file():
        raise FileNotFoundError(f"engine file not found: {engine_path}")
    info: dict[str, Any] = {
        "engine": str(engine_path),
        "engine_bytes": engine_path.stat().st_size,
        "engine_sha256": sha256_file(engine_path),
    }
    if record:
        info["record"] = {
            k: record.get(k)
            for k in (
                "flavour",
                "version",
                "precision",
                "network_layers",
                "profiles",
                "build_seconds",
                "compute_capabilities",
                "gpu",
                "tf32",
            )
        }
        info["matches_record"] = record.get("engine_sha256") == info["engine_sha256"]
    gpu = _gpu_info()
    if gpu is None:
        info["inspector"] = {
            "status": Status.SKIPPED,
            "reason": "no CUDA GPU: an engine can only be deserialized (and inspected) on a GPU",
        }
        return info
    trt, name = import_tensorrt((record or {}).get("flavour") or flavour)
    logger = _make_logger(trt)
    engine = trt.Runtime(logger).deserialize_cuda_engine(engine_path.read_bytes())
    if engine is None:
        info["inspector"] = {
            "status": Status.BROKEN,
            "reason": f"{name} could not deserialize the engine on {gpu['gpu']}",
        }
        return info
    inspector = engine.create_engine_inspector()
    layers = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    fused = len(layers.get("Layers", [])) if isinstance(layers, dict) else None
    if out_json is not None:
        atomic_write_bytes(out_json, json.dumps(layers, indent=1).encode())
    info["inspector"] = {
        "status": Status.DONE,
        "gpu": gpu,
        "fused_layers": fused,
        "json": str(out_json) if out_json else None,
    }
    return info


__all__ = [
    "BatchProfile",
    "EngineBuildError",
    "TrtBuildOptions",
    "build_engine",
    "inspect_engine",
    "load_timing_cache",
    "save_timing_cache",
    "cc_to_str",
    "default_rtx_ccs",
    "rtx_supported_ccs",
]
