"""ONNX Runtime backend (CPU EP here; the CUDA EP where onnxruntime-gpu is installed)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from nfdeploy.errors import require
from nfdeploy.runtime.base import Backend, BackendUnavailable


class OrtBackend(Backend):
    def __init__(self, path: str | Path, provider: str = "CPUExecutionProvider", precision: str = "fp32",
                 threads: int | None = None):
        ort = require("onnxruntime", "onnx")
        if provider not in ort.get_available_providers():
            raise BackendUnavailable(f"{provider} is not available (providers: {ort.get_available_providers()}); "
                                     "for CUDA install nfdeploy[gpu]")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=[provider])
        except Exception as e:  # ORT raises its own exception types (Fail, InvalidGraph, NotImplemented)
            raise BackendUnavailable(f"ONNX Runtime cannot load {Path(path).name}: {' '.join(str(e).split())[:240]}") from None
        self.input_name = self.session.get_inputs()[0].name
        self.name = f"onnxruntime-{'cpu' if provider.startswith('CPU') else provider.removesuffix('ExecutionProvider').lower()}"
        self.device = "cpu" if provider.startswith("CPU") else "cuda"
        self.precision = precision
        self.math_mode = {"fp32": "ieee fp32", "fp16": "fp16 weights and compute", "bf16": "bf16"}.get(precision, precision)
        self.threads = threads or os.cpu_count()

    def run(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input_name: np.ascontiguousarray(batch, np.float32)})[0],
                          dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "threads": self.threads}
