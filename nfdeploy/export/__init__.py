"""Export: folded networks to ONNX (+ precision variants), lint, metadata, manifest, checks, written as one
export dir (export_dir); presets and their overrides (presets); int8 Q/DQ (quantize); TensorRT engine builds
(engine_build)."""

from nfdeploy.export.export_dir import (
    ExportError,
    ExportOptions,
    ExportResult,
    ModelToExport,
    export_model,
    export_run,
    export_timm,
)
from nfdeploy.export.presets import (
    Int8Overrides,
    OnnxOverrides,
    TrtOverrides,
    export_options,
    load_preset,
    trt_options,
)

__all__ = [
    "ExportError",
    "ExportOptions",
    "ExportResult",
    "Int8Overrides",
    "ModelToExport",
    "OnnxOverrides",
    "TrtOverrides",
    "export_model",
    "export_options",
    "export_run",
    "export_timm",
    "load_preset",
    "trt_options",
]
