"""TensorRT / TensorRT-RTX runner on a CUDA GPU (torch owns the CUDA context and memory; no pycuda).

The runner refuses (BackendUnavailable, reported as "skipped") when it cannot run an engine faithfully:
no CUDA GPU; a TensorRT flavour or version other than the one that built the engine (engines are tied
to the exact version); a GPU whose compute capability is not among the engine's targets; a
TensorRT-RTX engine on a Hopper GPU (RTX engines do not run on CC 9.x).

I/O lives in torch CUDA tensors bound with set_tensor_address; execution is execute_async_v3 on a
dedicated non-default torch.cuda.Stream. cuda_graph=True: with TensorRT, one torch.cuda.CUDAGraph per
input shape, captured after a warm-up run; with TensorRT-RTX, its built-in CUDA graphs
(IRuntimeConfig.cuda_graph_strategy = WHOLE_GRAPH_CAPTURE), since external stream capture of an RTX
engine needs engines built with REQUIRE_USER_ALLOCATION and JIT kernels may still be specialising.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nfdeploy.artifacts import ArtifactError, sha256_file
from nfdeploy.errors import MissingExtraError
from nfdeploy.runtime.base import Backend, BackendUnavailable, cuda_gpu

RTX_KERNEL_STRATEGIES = ("eager", "lazy", "none")


def check_compatible(entry: dict[str, Any] | None, flavour: str, version: str, gpu: dict[str, Any]) -> None:
    """Raise BackendUnavailable when an engine described by `entry` (its build record) cannot run with
    `flavour` `version` on `gpu`. Pure: testable without a GPU."""
    cc = str(gpu["compute_capability"])
    if flavour == "tensorrt_rtx" and cc.split(".")[0] == "9":
        raise BackendUnavailable(f"TensorRT-RTX engines do not run on Hopper GPUs ({gpu.get('name', 'GPU')}, "
                                 f"compute capability {cc}); build the engine with TensorRT (flavour tensorrt) there")
    if not entry:
        return
    built_flavour, built_version = entry.get("flavour"), entry.get("version")
    if built_flavour and built_flavour != flavour:
        raise BackendUnavailable(f"engine was built by {built_flavour} {built_version}, but {flavour} {version} "
                                 f"is the flavour in use; rebuild the engine or install {built_flavour}")
    if built_version and str(built_version) != str(version):
        raise BackendUnavailable(f"engine was built by {built_flavour or flavour} {built_version}, installed is "
                                 f"{version}; TensorRT engines only load in the version that built them: rebuild it")
    targets = [str(t) for t in entry.get("compute_capabilities") or []]
    if targets and cc not in targets:
        raise BackendUnavailable(f"engine targets compute capabilities {targets}, this GPU ({gpu.get('name', 'GPU')}) "
                                 f"is {cc}; rebuild it for {cc}")


def _torch_dtype(trt, dt):
    import torch

    table = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32,
             "INT64": torch.int64, "INT8": torch.int8, "UINT8": torch.uint8, "BOOL": torch.bool}
    name = getattr(dt, "name", str(dt).split(".")[-1])
    if name not in table:
        raise BackendUnavailable(f"engine I/O type {name} is not supported by this runner")
    return table[name]


@dataclass
class _Slot:
    """Device buffers (and optionally a captured graph) for one input shape."""

    shape: tuple[int, ...]
    profile: int
    tensors: dict[str, Any]
    host_in: Any
    host_out: Any
    graph: Any = None


class TensorRTBackend(Backend):
    def __init__(self, engine_path: str | Path, manifest_entry: dict[str, Any] | None = None, flavour: str = "auto",
                 cuda_graph: bool = False, *, kernel_specialization: str = "eager"):
        gpu = cuda_gpu()
        if gpu is None:
            raise BackendUnavailable("TensorRT needs a CUDA GPU and torch sees none (torch.cuda.is_available() is "
                                     "False); engines can be built here (TensorRT-RTX) but not run")
        if kernel_specialization not in RTX_KERNEL_STRATEGIES:
            raise ValueError(f"kernel_specialization must be one of {RTX_KERNEL_STRATEGIES}")
        from nfdeploy.export.tensorrt import import_tensorrt

        entry = dict(manifest_entry or {})
        want = flavour if flavour != "auto" else entry.get("flavour") or "auto"
        try:
            trt, fl = import_tensorrt(want)
        except MissingExtraError as e:
            raise BackendUnavailable(str(e)) from None
        check_compatible(entry, fl, str(trt.__version__), gpu)

        engine_path = Path(engine_path)
        if not engine_path.is_file():
            raise ArtifactError(f"TensorRT engine not found: {engine_path}")
        if entry.get("engine_sha256") and sha256_file(engine_path) != entry["engine_sha256"]:
            raise ArtifactError(f"{engine_path} does not match its build record (sha256 differs): rebuild it")

        import torch

        self.trt, self.flavour, self.version, self.gpu, self.entry = trt, fl, str(trt.__version__), gpu, entry
        self.engine_path = engine_path
        torch.cuda.set_device(0)
        torch.cuda.init()  # torch creates (and owns) the primary CUDA context before TensorRT touches the GPU
        self.stream = torch.cuda.Stream()
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        blob = engine_path.read_bytes()
        self._check_validity(blob)
        self.engine = self.runtime.deserialize_cuda_engine(blob)
        if self.engine is None:
            raise BackendUnavailable(f"{fl} {self.version} could not deserialize {engine_path.name} on {gpu['name']} "
                                     f"(CC {gpu['compute_capability']})")
        del blob

        self.cuda_graph = bool(cuda_graph)
        self.graph_mode = "off"
        self.kernel_specialization = None
        if fl == "tensorrt_rtx" and hasattr(self.engine, "create_runtime_config"):
            rc = self.engine.create_runtime_config()
            strategy = getattr(trt, "DynamicShapesKernelSpecializationStrategy", None)
            if strategy is not None:
                rc.dynamic_shapes_kernel_specialization_strategy = getattr(strategy, kernel_specialization.upper())
                self.kernel_specialization = kernel_specialization
            if self.cuda_graph and hasattr(trt, "CudaGraphStrategy"):
                rc.cuda_graph_strategy = trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
                self.graph_mode = "tensorrt-rtx built-in (WHOLE_GRAPH_CAPTURE)"
            self._runtime_config = rc
            self.context = self.engine.create_execution_context(rc)
        else:
            self.context = self.engine.create_execution_context()
            if self.cuda_graph:
                self.graph_mode = "torch.cuda.CUDAGraph per input shape"
        if self.context is None:
            raise BackendUnavailable(f"{fl} could not create an execution context for {engine_path.name} "
                                     "(out of GPU memory?)")

        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        if len(self.input_names) != 1 or not self.output_names:
            raise BackendUnavailable(f"{engine_path.name} has inputs {self.input_names} and outputs "
                                     f"{self.output_names}; expected one image input and a logits output")
        self.input_name = self.input_names[0]
        self.output_name = "logits" if "logits" in self.output_names else self.output_names[0]
        self.dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}
        self.profiles = []
        for k in range(self.engine.num_optimization_profiles):
            lo, opt, hi = (tuple(s) for s in self.engine.get_tensor_profile_shape(self.input_name, k))
            self.profiles.append({"min": lo, "opt": opt, "max": hi})
        self.input_shape = tuple(self.engine.get_tensor_shape(self.input_name))  # (-1, C, H, W)
        self._slots: dict[tuple[int, ...], _Slot] = {}
        self._active: _Slot | None = None
        self._profile = 0

        prec = entry.get("precision", "fp32")
        tf32 = (entry.get("tf32") or {}).get("effective")
        self.name = "tensorrt-rtx" if fl == "tensorrt_rtx" else "tensorrt"
        self.device = "cuda"
        if prec == "fp32":
            self.precision = "fp32" if tf32 is False else "tf32"
            self.math_mode = ("ieee fp32 (TF32 flag cleared at build)" if tf32 is False else
                              "tf32 (TF32 flag set at build)" if tf32 else "tf32 (TensorRT default; build record unknown)")
        else:
            self.precision = prec
            self.math_mode = f"{prec} weights and compute (strongly typed ONNX variant)"

    # --------------------------------------------------------------------------------- internals

    def _check_validity(self, blob: bytes) -> None:
        """TensorRT-RTX can say from the engine header why it will not load here (version, CC, driver)."""
        fn = getattr(self.runtime, "get_engine_validity", None)
        if fn is None:
            return
        try:
            validity, diagnostics = fn(blob)
        except Exception:  # noqa: BLE001 - best effort; deserialization reports the hard failure
            return
        if getattr(validity, "name", str(validity)).endswith("INVALID"):
            flags = getattr(self.trt, "EngineInvalidityDiagnostics", None)
            reasons = []
            if flags is not None:
                bits = int(getattr(diagnostics, "value", diagnostics) or 0)
                reasons = [n for n, m in flags.__members__.items() if bits & int(m)]
            raise BackendUnavailable(f"{self.flavour} {self.version} reports {self.engine_path.name} invalid here "
                                     f"({', '.join(reasons) or diagnostics}) on {self.gpu['name']}")

    def _profile_for(self, batch: int) -> int:
        for k, p in enumerate(self.profiles):
            if p["min"][0] <= batch <= p["max"][0]:
                return k
        ranges = [f"{p['min'][0]}..{p['max'][0]}" for p in self.profiles]
        raise ValueError(f"batch size {batch} outside the engine's optimization profiles {ranges}")

    def _bind(self, slot: _Slot) -> None:
        if slot.profile != self._profile:
            if not self.context.set_optimization_profile_async(slot.profile, self.stream.cuda_stream):
                raise RuntimeError(f"could not switch to optimization profile {slot.profile}")
            self._profile = slot.profile
        if not self.context.set_input_shape(self.input_name, slot.shape):
            raise RuntimeError(f"TensorRT rejected input shape {slot.shape}")
        for name, t in slot.tensors.items():
            if not self.context.set_tensor_address(name, t.data_ptr()):
                raise RuntimeError(f"TensorRT rejected the address of tensor {name!r}")
        self._active = slot

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError(f"{self.flavour} execute_async_v3 failed for {self.engine_path.name}")

    def _slot(self, shape: tuple[int, ...]) -> _Slot:
        import torch

        slot = self._slots.get(shape)
        if slot is not None:
            return slot
        profile = self._profile_for(shape[0])
        tensors = {self.input_name: torch.empty(shape, dtype=self.dtypes[self.input_name], device="cuda")}
        host_in = torch.empty(shape, dtype=self.dtypes[self.input_name], pin_memory=True)  # converted on the CPU
        slot = _Slot(shape, profile, tensors, host_in, None)
        # Output shapes are known once the input shape is set on the context.
        if slot.profile != self._profile:
            self.context.set_optimization_profile_async(slot.profile, self.stream.cuda_stream)
            self._profile = slot.profile
        if not self.context.set_input_shape(self.input_name, shape):
            raise RuntimeError(f"TensorRT rejected input shape {shape}")
        for name in self.output_names:
            out_shape = tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in out_shape):
                raise BackendUnavailable(f"output {name!r} has a data-dependent shape {out_shape}; not supported")
            tensors[name] = torch.empty(out_shape, dtype=self.dtypes[name], device="cuda")
        slot.host_out = torch.empty(tuple(tensors[self.output_name].shape), dtype=torch.float32, pin_memory=True)
        self._bind(slot)
        if self.cuda_graph and self.flavour == "tensorrt":
            with torch.cuda.stream(self.stream):
                tensors[self.input_name].zero_()
                self._execute()  # warm-up: lets TensorRT finish shape-dependent setup before capture
            self.stream.synchronize()
            capturable = getattr(self.context, "is_stream_capturable", None)
            if capturable is None or capturable(self.stream.cuda_stream):
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=self.stream):
                    self._execute()
                slot.graph = graph
            else:
                self.graph_mode = "off (context reports the stream is not capturable)"
        self._slots[shape] = slot
        return slot

    # --------------------------------------------------------------------------------------- API

    def run(self, batch: np.ndarray) -> np.ndarray:
        import torch

        x = np.ascontiguousarray(batch, dtype=np.float32)
        want = self.input_shape[1:]
        if x.ndim != len(self.input_shape) or any(w not in (-1, d) for w, d in zip(want, x.shape[1:])):
            raise ValueError(f"input batch shape {x.shape} does not fit the engine input {self.input_shape}")
        slot = self._slot(tuple(int(d) for d in x.shape))
        if self._active is not slot:
            self._bind(slot)
        slot.host_in.copy_(torch.from_numpy(x))  # float32 -> the engine's input type, on the CPU
        with torch.cuda.stream(self.stream):
            slot.tensors[self.input_name].copy_(slot.host_in, non_blocking=True)
            if slot.graph is not None:
                slot.graph.replay()
            else:
                self._execute()
            out = slot.tensors[self.output_name]
            slot.host_out.copy_(out if out.dtype == torch.float32 else out.float(), non_blocking=True)
        self.stream.synchronize()
        return slot.host_out.numpy().copy()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "flavour": self.flavour, "version": self.version, "engine": self.engine_path.name,
                "gpu": self.gpu["name"], "compute_capability": self.gpu["compute_capability"],
                "cuda_graph": self.graph_mode, "rtx_kernel_specialization": self.kernel_specialization,
                "profiles": [f"{p['min'][0]}:{p['opt'][0]}:{p['max'][0]}" for p in self.profiles]}


__all__ = ["TensorRTBackend", "check_compatible", "cuda_gpu"]
