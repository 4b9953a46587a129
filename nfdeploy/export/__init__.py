"""Export: folded networks to ONNX (+ precision variants), lint, metadata, manifest, checks; presets;
TensorRT engine builds."""

from nfdeploy.export.pipeline import (MANIFEST, ExportError, ExportOptions, ExportResult, export_model, export_run,
                                      export_timm, load_manifest)
from nfdeploy.export.presets import export_options, load_preset, trt_options

__all__ = ["MANIFEST", "ExportError", "ExportOptions", "ExportResult", "export_model", "export_options", "export_run",
           "export_timm", "load_manifest", "load_preset", "trt_options"]
