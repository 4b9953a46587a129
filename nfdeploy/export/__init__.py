"""Export: folded networks to ONNX (+ precision variants), lint, metadata, manifest, checks; presets;
TensorRT engine builds."""

from nfdeploy.export.pipeline import (
    ExportError,
    ExportOptions,
    ExportResult,
    export_model,
    export_run,
    export_timm,
)
from nfdeploy.export.presets import export_options, load_preset, trt_options

__all__ = [
    "ExportError",
    "ExportOptions",
    "ExportResult",
    "export_model",
    "export_options",
    "export_run",
    "export_timm",
    "load_preset",
    "trt_options",
]
