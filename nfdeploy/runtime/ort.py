"""ONNX Runtime backend: CPU EP, or the CUDA EP (onnxruntime-gpu) with IO binding."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from nfdeploy.errors import require
from nfdeploy.runtime.base import Backend, BackendUnavailable


class OrtBackend(Backend):
    """`tf32` applies to the CUDA EP only (its default is TF32 on; nfdeploy sets it explicitly)."""

    def __init__(self, path: str | Path, provider: str = "CPUExecutionProvider", precision: str = "fp32",
                 threads: int | None = None, tf32: bool = False):
        ort = require("onnxruntime", "onnx")
        cuda = provider == "CUDAExecutionProvider"
        if cuda and hasattr(ort, "preload_dlls"):
            try:  # onnxruntime-gpu finds the CUDA/cuDNN libraries that torch's wheels brought
                ort.preload_dlls()
            except Exception:  # noqa: BLE001 - a failed preload shows up as a missing provider below
                pass
        if provider not in ort.get_available_providers():
            raise BackendUnavailable(f"{provider} is not available (providers: {', '.join(ort.get_available_providers())}); "
                                     "for CUDA install nfdeploy[gpu]")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        providers: list[Any] = [(provider, {"use_tf32": "1" if tf32 else "0"})] if cuda else [provider]
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as e:  # ORT raises its own exception types (Fail, InvalidGraph, NotImplemented)
            raise BackendUnavailable(f"ONNX Runtime cannot load {Path(path).name}: {' '.join(str(e).split())[:240]}") from None
        if cuda and "CUDAExecutionProvider" not in self.session.get_providers():
            raise BackendUnavailable("the CUDA EP could not be initialised (no GPU or CUDA libraries missing)")
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.name = f"onnxruntime-{'cuda' if cuda else 'cpu'}-{precision}"
        self.device = "cuda" if cuda else "cpu"
        self.precision = "tf32" if cuda and tf32 and precision == "fp32" else precision
        self.math_mode = {"fp32": "ieee fp32" + (" (TF32 off)" if cuda else ""), "tf32": "tf32 conv/matmul",
                          "fp16": "fp16 weights and compute", "bf16": "bf16"}.get(self.precision, self.precision)
        self.threads = (threads or os.cpu_count()) if not cuda else None

    def run(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, np.float32)
        if self.device == "cuda":
            binding = self.session.io_binding()
            binding.bind_cpu_input(self.input_name, x)
            binding.bind_output(self.output_name, "cuda")
            self.session.run_with_iobinding(binding)
            return np.asarray(binding.copy_outputs_to_cpu()[0], dtype=np.float32)
        return np.asarray(self.session.run(None, {self.input_name: x})[0], dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "threads": self.threads, "providers": self.session.get_providers()}
