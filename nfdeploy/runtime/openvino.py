"""OpenVINO backend: the CPU plugin on the export's own ONNX files (read directly, no IR conversion step).

The precision a backend's name states is set, never left to the plugin's defaults: OpenVINO's CPU plugin
computes float graphs in bf16 by default on CPUs with AVX512_BF16 or AMX (its INFERENCE_PRECISION_HINT
defaults to bf16 there, f32 elsewhere), so `openvino-cpu-fp32` compiles with the hint f32 and
`openvino-cpu-bf16` (the fp32 ONNX file) with the hint bf16. After compiling, the runtime model (the
graph the plugin executes, with each node's `runtimePrecision`) is checked: a backend whose convolutions
do not run in the precision its name says is unavailable here, with the counts as the reason, rather
than reported under a false name. This covers bf16 on a CPU without native bf16 and the int8 Q/DQ graphs
(int8 from model.int8.onnx, int8-ort from model.int8.ort.onnx), which count only when the plugin fuses
their Q/DQ pairs into u8/i8 convolutions.

Threads follow `threads` as for ONNX Runtime (INFERENCE_NUM_THREADS; None: the plugin's default). One
stream and one synchronous infer request (PERFORMANCE_HINT LATENCY): one call at a time, like every
other backend here.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from nfdeploy.errors import MissingExtraError, one_line, require
from nfdeploy.runtime.base import Backend, BackendBroken, BackendSpec, BackendUnavailable, verify_artifact

# nfdeploy precision -> (INFERENCE_PRECISION_HINT, the runtimePrecision values its convolutions must show).
# The int8 forms keep the hint f32: what is not quantized in the graph stays in float32.
PRECISION_HINTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "fp32": ("f32", ("f32",)),
    "bf16": ("bf16", ("bf16",)),
    "int8": ("f32", ("u8", "i8")),
    "int8-ort": ("f32", ("u8", "i8")),
}
# The ops whose runtime precision decides the check: every multiply-accumulate of a CNN is in one of them.
MAC_LAYER_TYPES = ("Convolution", "FullyConnected", "MatMul", "GroupConvolution")
CAPABILITY = {"bf16": "BF16"}  # precisions that need a capability in the CPU plugin's OPTIMIZATION_CAPABILITIES

_CORE = None


def _ov():
    return require("openvino", "openvino")


def core():
    """One openvino.Core per process (it loads the plugin list; the CPU plugin loads on first use)."""
    global _CORE
    if _CORE is None:
        _CORE = _ov().Core()
    return _CORE


def runtime_precisions(compiled: Any) -> dict[str, dict[str, int]]:
    """{layer type: {runtime precision: count}} of the graph the plugin actually executes (the runtime
    model: fused nodes, with rt_info "layerType" and "runtimePrecision")."""
    counts: dict[str, Counter] = {}
    for op in compiled.get_runtime_model().get_ops():
        kind, prec = _rt_info(op, "layerType") or op.get_type_name(), _rt_info(op, "runtimePrecision") or "?"
        counts.setdefault(kind, Counter())[prec] += 1
    return {k: dict(v) for k, v in sorted(counts.items())}


def mac_kernels(compiled: Any) -> dict[str, int]:
    """The plugin's kernel ("primitiveType", e.g. brgconv_avx2_I8, jit_avx512_FP32) → count over the
    multiply-accumulate layers: which instruction set the plugin chose on this CPU."""
    kernels: Counter = Counter()
    for op in compiled.get_runtime_model().get_ops():
        if _rt_info(op, "layerType") in MAC_LAYER_TYPES:
            kernels[_rt_info(op, "primitiveType") or "?"] += 1
    return dict(sorted(kernels.items()))


def _rt_info(op: Any, key: str) -> str | None:
    info = op.get_rt_info()
    return info[key].astype(str) if key in info else None


def mac_precisions(precisions: dict[str, dict[str, int]]) -> dict[str, int]:
    """Runtime precision → count over the multiply-accumulate layers (convolutions, fully connected)."""
    total: Counter = Counter()
    for kind in MAC_LAYER_TYPES:
        total.update(precisions.get(kind, {}))
    return dict(total)


class OpenVinoBackend(Backend):
    """Runs the ONNX file `path` with OpenVINO's CPU plugin at spec.precision (see PRECISION_HINTS); `pixels`:
    the file is an image-input graph (uint8 pixel batches, normalized inside)."""

    def __init__(
        self,
        spec: BackendSpec,
        input_shape: tuple[int, int, int],
        path: str | Path,
        threads: int | None = None,
        sha256: str | None = None,
        *,
        pixels: bool = False,
    ):
        if spec.runtime != "openvino" or spec.device != "cpu":
            raise ValueError(
                f"OpenVinoBackend needs runtime 'openvino' on 'cpu', got {spec.runtime!r} on {spec.device!r}"
            )
        if spec.precision not in PRECISION_HINTS:
            raise ValueError(f"OpenVinoBackend runs {', '.join(PRECISION_HINTS)}, not {spec.precision!r}")
        super().__init__(spec, input_shape)
        self.path = Path(path)
        self.threads = threads
        self.sha256 = sha256  # the manifest's digest of the file, checked before it loads
        self.takes_pixels = pixels
        self.compiled = None
        self.request = None
        self.precisions: dict[str, dict[str, int]] | None = None
        self.kernels: dict[str, int] | None = None

    @property
    def config(self) -> dict[str, str]:
        cfg = {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[self.precision][0], "PERFORMANCE_HINT": "LATENCY"}
        if self.threads:
            cfg["INFERENCE_NUM_THREADS"] = str(self.threads)
        return cfg

    @property
    def artifact(self) -> Path:
        return self.path

    def unavailable_reason(self) -> str | None:
        try:
            c = core()
        except MissingExtraError as e:
            return str(e)
        if "CPU" not in c.available_devices:
            return f"OpenVINO sees no CPU device (devices: {', '.join(c.available_devices) or 'none'})"
        need = CAPABILITY.get(self.precision)
        if need:
            caps = list(c.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
            if need not in caps:
                return (
                    f"this CPU has no native {self.precision} for OpenVINO (its capabilities: {', '.join(caps)}); "
                    f"the plugin would compute in f32 under a {self.precision} name"
                )
        return None  # a missing or damaged file is not "unavailable here": loading it fails (broken)

    def _activate(self) -> None:
        c = core()
        verify_artifact(self.path, self.sha256)
        try:
            model = c.read_model(str(self.path))
            compiled = c.compile_model(model, "CPU", self.config)
        except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError (or its own types) for unreadable models
            raise BackendBroken(
                f"OpenVINO failed to load {self.path.name}: {one_line(e, 240, with_type=False)}"
            ) from None
        self.compiled = compiled
        self.precisions = runtime_precisions(compiled)
        self.kernels = mac_kernels(compiled)
        macs = mac_precisions(self.precisions)
        want = PRECISION_HINTS[self.precision][1]
        if not macs or any(p not in want for p in macs):
            shown = ", ".join(f"{n} {p}" for p, n in sorted(macs.items())) or "none"
            raise BackendUnavailable(
                f"OpenVINO runs this graph's convolutions/matmuls in {shown} here, not "
                f"{'/'.join(want)}: not a {self.precision} backend on this CPU"
            )
        self.request = compiled.create_infer_request()

    def _deactivate(self) -> None:
        self.request = None
        self.compiled = None

    def _run(self, batch: np.ndarray) -> np.ndarray:
        self.request.infer({0: batch})
        # The output tensor belongs to the request and is overwritten by the next call: copy it out.
        return np.array(self.request.get_output_tensor(0).data, dtype=np.float32, copy=True)

    def describe(self) -> dict[str, Any]:
        out = {
            **super().describe(),
            "file": self.path.name,
            "config": self.config,
            "threads": self.threads or os.cpu_count(),
        }
        if self.compiled is not None:
            out["threads"] = int(self.compiled.get_property("INFERENCE_NUM_THREADS")) or out["threads"]
            out["inference_precision"] = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
            out["mac_precisions"] = mac_precisions(self.precisions or {})
            out["mac_kernels"] = self.kernels
        return out


__all__ = [
    "CAPABILITY",
    "MAC_LAYER_TYPES",
    "PRECISION_HINTS",
    "OpenVinoBackend",
    "core",
    "mac_kernels",
    "mac_precisions",
    "runtime_precisions",
]
