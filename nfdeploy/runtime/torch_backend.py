"""PyTorch backends: CPU float64/float32 (unfolded or folded model), CUDA with TF32 on or off,
fp16/bf16, eager or torch.compile, optionally replayed through a CUDA graph."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from nfdeploy.precision import get_precision
from nfdeploy.runtime.base import Backend, BackendSpec


class TorchBackend(Backend):
    """`model()` returns the module to run (shared, never modified: activate copies it to the device
    and dtype). spec.precision "tf32" = float32 storage with TF32 convolutions and matmuls (CUDA only);
    "fp32" on CUDA switches TF32 off explicitly. spec.mode: "" or "eager", "compile", "cudagraph"."""

    def __init__(self, spec: BackendSpec, input_shape: tuple[int, int, int], model: Callable[[], nn.Module]):
        if spec.runtime != "torch":
            raise ValueError(f"TorchBackend needs runtime 'torch', got {spec.runtime!r}")
        super().__init__(spec, input_shape)
        self._model = model
        self.input_dtype = get_precision(spec.precision).torch_dtype
        self.input_device = spec.device
        self._tf32 = spec.precision == "tf32"
        self._stream = None

    @property
    def stream(self) -> Any:
        return self._stream

    def unavailable_reason(self) -> str | None:
        if self.device == "cuda" and not torch.cuda.is_available():
            return "no CUDA device visible to torch"
        if self.device != "cuda" and (self._tf32 or self.spec.mode == "cudagraph"):
            return f"{'TF32' if self._tf32 else 'CUDA graphs'} need a CUDA device"
        return None

    def _activate(self) -> None:
        self._graphs: dict[tuple[int, ...], tuple[Any, torch.Tensor, torch.Tensor]] = {}
        self._compiled = {}
        self.module = copy.deepcopy(self._model()).to(device=self.device, dtype=self.input_dtype).eval()
        # The batch dim is dynamic (marked at each new batch size, see _forward): one graph serves every
        # batch > 1 (batch 1 is specialised by dynamo), instead of one graph per shape until dynamo's
        # recompile limit (8) silently turns later shapes into eager runs.
        self._fn = torch.compile(self.module, dynamic=None) if self.spec.mode == "compile" else self.module
        if self.device == "cuda":
            self._stream = torch.cuda.Stream()

    def _deactivate(self) -> None:
        # Tolerates a half-made state: plain assignments, and a dynamo reset that is harmless when nothing compiled.
        self.module = self._fn = None
        self._graphs = {}
        self._compiled = {}
        self._stream = None
        if self.spec.mode == "compile":
            torch._dynamo.reset()  # compiled graphs hold their own references to the weights

    @property
    def compiled_batches(self) -> dict[int, bool]:
        """{batch size: whether it ran compiled} for every batch size run since activation (compile mode;
        {} otherwise). False: dynamo refused to compile that shape (recompile limit) and it ran eagerly."""
        return dict(getattr(self, "_compiled", {}))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.spec.mode != "compile":
            return self._fn(x)
        n = int(x.shape[0])
        seen = self._compiled.get(n)
        if seen is True:
            return self._fn(x)
        if seen is False:
            return self.module(x)
        # A new batch size: compile (or reuse the dynamic graph) with a hard failure instead of dynamo's
        # silent eager fallback, so the record says what really ran.
        torch._dynamo.maybe_mark_dynamic(x, 0)
        try:
            with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
                out = self._fn(x)
        except torch._dynamo.exc.FailOnRecompileLimitHit:
            self._compiled[n] = False
            return self.module(x)
        self._compiled[n] = True
        return out

    def _math_flags(self) -> None:
        if self.device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = self._tf32
            torch.backends.cudnn.allow_tf32 = self._tf32

    @torch.inference_mode()
    def run_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Tensor in (any float dtype, any device), tensor out on the backend's device and dtype."""
        if not self.active:
            raise RuntimeError(f"{self.name} is not active: use `with backend:` or backend.activate()")
        self._math_flags()
        x = x.to(self.device, self.input_dtype)
        if self.spec.mode != "cudagraph":
            return self._forward(x)
        key = tuple(x.shape)
        if key not in self._graphs:
            static_in = x.clone()
            with torch.cuda.stream(self._stream):
                for _ in range(2):  # warm-up outside capture
                    self._fn(static_in)
            self._stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self._stream):
                static_out = self._fn(static_in)
            self._graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = self._graphs[key]
        static_in.copy_(x)
        graph.replay()
        return static_out

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self.run_tensor(torch.from_numpy(batch)).float().cpu().numpy()

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "device_name": torch.cuda.get_device_name()
            if self.device == "cuda" and torch.cuda.is_available()
            else "cpu",
            "threads": torch.get_num_threads() if self.device == "cpu" else None,
            "compiled_batches": self.compiled_batches if self.spec.mode == "compile" else None,
        }


__all__ = ["TorchBackend"]
