"""PyTorch backends: CPU float64/float32 (unfolded or folded), CUDA with TF32 on/off, fp16/bf16,
eager or torch.compile, optionally replayed through a CUDA graph."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from nfdeploy.runtime.base import Backend, BackendUnavailable

DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TorchBackend(Backend):
    """`module` runs on `device` in `precision`; "tf32" = float32 storage with TF32 convolutions and
    matmuls (CUDA only); "fp32" on CUDA switches TF32 off explicitly."""

    def __init__(self, module: nn.Module, name: str, device: str = "cpu", precision: str = "fp32",
                 compile: bool = False, cuda_graph: bool = False):
        if precision not in DTYPES:
            raise ValueError(f"precision {precision!r} not in {list(DTYPES)}")
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable("no CUDA device visible to torch")
        if precision == "tf32" and device != "cuda":
            raise BackendUnavailable("TF32 exists only on CUDA devices")
        if cuda_graph and device != "cuda":
            raise BackendUnavailable("CUDA graphs need a CUDA device")
        self.dtype = DTYPES[precision]
        self.module = copy.deepcopy(module).to(device=device, dtype=self.dtype).eval()
        self.tf32 = precision == "tf32"
        self.name, self.device, self.precision = name, device, precision
        self.math_mode = {"fp64": "ieee fp64", "fp32": "ieee fp32 (TF32 off)" if device == "cuda" else "ieee fp32",
                          "tf32": "tf32 conv/matmul", "fp16": "fp16", "bf16": "bf16"}[precision]
        self.compiled = compile
        self.cuda_graph = cuda_graph
        self._fn = torch.compile(self.module, dynamic=False) if compile else self.module
        self._graphs: dict[tuple[int, ...], tuple[Any, torch.Tensor, torch.Tensor]] = {}
        if device == "cuda":
            self.device_name = torch.cuda.get_device_name()
            self.stream = torch.cuda.Stream()
        else:
            self.device_name = "cpu"

    def _math_flags(self):
        if self.device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = self.tf32
            torch.backends.cudnn.allow_tf32 = self.tf32

    @torch.inference_mode()
    def run_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Device tensor in (any float dtype), device tensor out (the backend's dtype)."""
        self._math_flags()
        x = x.to(self.device, self.dtype)
        if not self.cuda_graph:
            return self._fn(x)
        key = tuple(x.shape)
        if key not in self._graphs:
            static_in = x.clone()
            with torch.cuda.stream(self.stream):
                for _ in range(2):  # warm-up (and compile) outside capture
                    self._fn(static_in)
            self.stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self.stream):
                static_out = self._fn(static_in)
            self._graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = self._graphs[key]
        static_in.copy_(x)
        graph.replay()
        return static_out

    def run(self, batch: np.ndarray) -> np.ndarray:
        out = self.run_tensor(torch.from_numpy(np.ascontiguousarray(batch)))
        return out.float().cpu().numpy()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "device_name": self.device_name, "compiled": self.compiled,
                "cuda_graph": self.cuda_graph, "threads": torch.get_num_threads() if self.device == "cpu" else None}
