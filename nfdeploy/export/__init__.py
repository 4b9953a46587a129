"""Export: folded networks to ONNX (+ precision variants), lint, metadata, manifest, checks."""

from nfdeploy.export.pipeline import (ExportError, ExportOptions, ExportResult, export_model, export_run,
                                      export_timm, load_manifest, load_preset)

__all__ = ["ExportError", "ExportOptions", "ExportResult", "export_model", "export_run", "export_timm",
           "load_manifest", "load_preset"]
