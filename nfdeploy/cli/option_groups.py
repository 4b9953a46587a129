"""The options several commands share, defined once each (Polygraphy's argument groups, the typer way): an
`Annotated` type per option, shown under its group's panel in --help, and one function per group that turns the
parsed values into the library's options object. A command declares `only: Only = None`; it never restates a flag."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
import typer.core

BACKENDS, DATA, TIMING, ONNX, INT8, TENSORRT, SERVING = (
    "Backends",
    "Data",
    "Timing",
    "ONNX graphs",
    "INT8",
    "TensorRT",
    "Serving",
)

# --------------------------------------------------------------------------------------------- backends, data
Only = Annotated[
    list[str] | None,
    typer.Option(
        "--only",
        help="Only the backends this selects: whole name parts (fp32, onnxruntime-cpu, tensorrt) or a glob "
        "('*fp16*'); repeatable.",
        metavar="PATTERN",
        rich_help_panel=BACKENDS,
    ),
]
Threads = Annotated[
    int | None,
    typer.Option(
        "--threads", help="CPU threads of torch and ONNX Runtime (default: as found).", rich_help_panel=BACKENDS
    ),
]
Dataset = Annotated[
    str | None,
    typer.Option(help="Dataset (default: the run's): digits, cifar10, imagefolder, synthetic.", rich_help_panel=DATA),
]
DataPath = Annotated[str | None, typer.Option(help="Path for cifar10 / imagefolder.", rich_help_panel=DATA)]
ReportDir = Annotated[
    Path | None, typer.Option("--out", "-o", help="Report dir (default EXPORT_DIR-reports beside the export).")
]
ExportDir = Annotated[Path, typer.Argument(help="Export dir (manifest.json).")]

# --------------------------------------------------------------------------------------------- timing
Batches = Annotated[str, typer.Option("--batch", help="Comma list of batch sizes.", rich_help_panel=TIMING)]
MinTime = Annotated[
    float,
    typer.Option(help="Seconds of timed iterations per backend and batch (at least 10 runs).", rich_help_panel=TIMING),
]
Warmup = Annotated[float, typer.Option(help="Seconds of warm-up per backend and batch.", rich_help_panel=TIMING)]
MaxTime = Annotated[
    float | None,
    typer.Option(
        "--max-time", help="Cap in seconds per cell and member (default 5 x min time).", rich_help_panel=TIMING
    ),
]

# --------------------------------------------------------------------------------------------- export: ONNX, INT8
Precision = Annotated[
    str | None,
    typer.Option(
        help="Comma list of fp32,fp16,bf16,int8 (TensorRT Q/DQ form),int8-ort (ONNX Runtime CPU form) (overrides the "
        "preset).",
        rich_help_panel=ONNX,
    ),
]
Opset = Annotated[int | None, typer.Option(help="ONNX opset (default 18; 20 for GELU models).", rich_help_panel=ONNX)]
IoDtype = Annotated[
    str | None,
    typer.Option(help="float32 (Cast at the edges) or native I/O for fp16/bf16.", rich_help_panel=ONNX),
]
InputSize = Annotated[
    int | None, typer.Option(help="Static spatial input size (default: the model's).", rich_help_panel=ONNX)
]
Check = Annotated[
    bool | None,
    typer.Option("--check/--no-check", help="ONNX Runtime parity check (default on).", rich_help_panel=ONNX),
]
ImageInput = Annotated[
    bool,
    typer.Option(
        "--image-input",
        help="Also write model.uint8.onnx: uint8 pixels in (preprocessing.json says how an image becomes them), "
        "the normalization inside the graph.",
        rich_help_panel=ONNX,
    ),
]
ImageNorm = Annotated[
    str | None,
    typer.Option(
        help="How the image-input graph normalizes: fold (into the first conv where exact; default) or explicit "
        "(Cast, Div, Sub, Div in front, the order Python's preprocessing computes).",
        rich_help_panel=ONNX,
    ),
]
Calibration = Annotated[
    str | None,
    typer.Option(help="int8 calibration: minmax (default), percentile or entropy.", rich_help_panel=INT8),
]
CalibSamples = Annotated[
    int | None, typer.Option(help="int8 calibration images (default 512, training split).", rich_help_panel=INT8)
]
CalibSeed = Annotated[
    int | None, typer.Option(help="Seed choosing the calibration images (default 0).", rich_help_panel=INT8)
]
CalibDir = Annotated[
    Path | None, typer.Option(help="Folder of calibration images (needed for --timm int8).", rich_help_panel=INT8)
]
Int8Keep = Annotated[
    list[str] | None,
    typer.Option(
        "--int8-keep",
        help="ONNX node/tensor name (glob) kept in float (repeatable).",
        metavar="GLOB",
        rich_help_panel=INT8,
    ),
]
Int8OrtWeightBits = Annotated[
    int | None,
    typer.Option(
        help="int8-ort weight range: 7 (default; runs correctly on every x86 CPU) or 8 (more accurate; only for CPUs "
        "with VNNI/AMX: saturates without them).",
        rich_help_panel=INT8,
    ),
]

# --------------------------------------------------------------------------------------------- TensorRT
TrtFlavour = Annotated[
    str | None,
    typer.Option(help="auto (tensorrt, else tensorrt-rtx), tensorrt or tensorrt-rtx.", rich_help_panel=TENSORRT),
]
Profile = Annotated[
    list[str] | None,
    typer.Option(
        "--profile",
        help="TensorRT optimization profile MIN:OPT:MAX (repeatable).",
        metavar="MIN:OPT:MAX",
        rich_help_panel=TENSORRT,
    ),
]
Tf32 = Annotated[
    bool | None, typer.Option("--tf32/--no-tf32", help="TF32 in fp32 engines (default on).", rich_help_panel=TENSORRT)
]
OptLevel = Annotated[
    int | None, typer.Option(help="Builder optimization level 0-5 (default 3).", rich_help_panel=TENSORRT)
]
TimingCache = Annotated[
    Path | None, typer.Option(help="Persistent timing cache file (TensorRT proper).", rich_help_panel=TENSORRT)
]
ComputeCapability = Annotated[
    list[str] | None,
    typer.Option(
        "--cc", help="TensorRT-RTX target compute capability (repeatable).", metavar="CC", rich_help_panel=TENSORRT
    ),
]


def trt_overrides(
    flavour: str | None,
    profiles: list[str] | None,
    tf32: bool | None,
    opt_level: int | None,
    timing_cache: Path | None,
    compute_capabilities: list[str] | None,
) -> Any:
    """The TensorRT group as the library's TrtOverrides (shared by `export --trt` and `engine`)."""
    from nfdeploy.export import TrtOverrides

    return TrtOverrides(
        flavour=flavour,
        profiles=tuple(profiles or ()),
        tf32=tf32,
        optimization_level=opt_level,
        timing_cache=timing_cache,
        compute_capabilities=tuple(compute_capabilities or ()),
    )


# --------------------------------------------------------------------------------------------- serving
ServedBackend = Annotated[
    str | None,
    typer.Option(
        "--backend",
        help="Backend to serve (default: the fastest that passed parity in the export's parity and bench reports; "
        "onnxruntime-cpu-fp32 when they do not decide).",
        rich_help_panel=SERVING,
    ),
]
MaxBatch = Annotated[
    int | None,
    typer.Option(
        "--max-batch", help="Largest batch Triton's dynamic batcher forms (default 32).", rich_help_panel=SERVING
    ),
]
MaxQueueDelayUs = Annotated[
    int | None,
    typer.Option(
        "--max-queue-delay-us",
        help="How long a request may wait for batch-mates, µs (default 0: batches form from what queued while the "
        "model ran).",
        rich_help_panel=SERVING,
    ),
]
MaxQueueSize = Annotated[
    int | None,
    typer.Option(
        "--max-queue-size",
        help="Requests waiting at most; beyond it a request is refused at once (default 32 × max batch).",
        rich_help_panel=SERVING,
    ),
]
QueueTimeoutUs = Annotated[
    int | None,
    typer.Option(
        "--queue-timeout-us", help="A request waiting longer is refused (default: no timeout).", rich_help_panel=SERVING
    ),
]
Instances = Annotated[
    int | None,
    typer.Option("--instances", help="Model instances, each its own backend (default 1).", rich_help_panel=SERVING),
]
InstanceThreads = Annotated[
    int | None,
    typer.Option(
        "--threads", help="Threads per instance (ONNX Runtime/OpenVINO intra-op, torch CPU).", rich_help_panel=SERVING
    ),
]
BatchInvariant = Annotated[
    bool | None,
    typer.Option(
        "--batch-invariant/--no-batch-invariant",
        help="Pad every executed batch to --max-batch rows, so a response never depends on its batch-mates (not "
        "needed, and skipped, when parity measured the backend bitwise batch-invariant).",
        rich_help_panel=SERVING,
    ),
]
AllowUnchecked = Annotated[
    bool | None,
    typer.Option(
        "--allow-unchecked/--checked-only",
        help="Serve a backend that failed parity (said in its parameters).",
        rich_help_panel=SERVING,
    ),
]


SERVING_KEYS = (
    "backend",
    "max_batch",
    "max_queue_delay_us",
    "max_queue_size",
    "queue_timeout_us",
    "instances",
    "threads",
    "batch_invariant",
    "allow_unchecked",
)


def serving_values(values: dict[str, Any]) -> dict[str, Any]:
    """The serving group's values among a command's parameters (`serving_values(locals())` as its first line)."""
    return {k: values[k] for k in SERVING_KEYS if k in values}


def package_options(**given: Any) -> Any:
    """The serving group as the library's PackageOptions (None: the library's default)."""
    from nfdeploy.serve.repository import PackageOptions

    return PackageOptions(**{k: v for k, v in given.items() if v is not None})


def serve_flags(**given: Any) -> list[str]:
    """The serving group back as `nfdeploy serve` flags (for the server the load test starts)."""
    out = []
    for k, v in given.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):  # flags whose off form is --no-NAME
            out.append(flag if v else "--no-" + flag[2:])
        elif v is not None:
            out += [flag, str(v)]
    return out


# --------------------------------------------------------------------------------------------- help
def show_flags_as_flags() -> None:
    """typer's rich help prints a value type (<bool>) beside every flag, --help included; a flag takes no value,
    so its row shows none (the one place nfdeploy adjusts typer; tests/test_cli.py checks every command's help)."""
    option = typer.core.TyperOption
    shown = getattr(option, "display_type_rich", None)
    if shown is None or getattr(shown, "nfdeploy_flags", False):
        return

    def display_type_rich(self: Any, ctx: Any) -> str | None:
        return None if self.is_flag else shown(self, ctx)

    display_type_rich.nfdeploy_flags = True  # type: ignore[attr-defined]
    option.display_type_rich = display_type_rich
