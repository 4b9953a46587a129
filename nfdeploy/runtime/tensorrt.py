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

from nfdeploy.errors import MissingExtraError, one_line
from nfdeploy.machine import cuda_gpu
from nfdeploy.runtime.base import Backend, BackendBroken, BackendSpec, BackendUnavailable, verify_artifact

# The flavours, as nfdeploy spells them everywhere (names, build records, --trt-flavour), and their modules.
FLAVOUR_MODULES = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}
_INSTALL_HINTS = {
    "tensorrt": "pip install 'nfdeploy[trt]' (TensorRT; its library wheels come from NVIDIA's own index)",
    "tensorrt-rtx": "pip install 'nfdeploy[rtx]' (TensorRT-RTX; builds engines without a GPU)",
}

RTX_KERNEL_STRATEGIES = ("eager", "lazy", "none")


def import_tensorrt(flavour: str = "auto"):
    """Return (module, flavour) with flavour "tensorrt" or "tensorrt-rtx"; "auto" tries tensorrt first."""
    import importlib

    if flavour == "auto":
        candidates = list(FLAVOUR_MODULES)
    elif flavour in FLAVOUR_MODULES:
        candidates = [flavour]
    else:
        raise ValueError(f"unknown TensorRT flavour {flavour!r}; choose auto, {' or '.join(FLAVOUR_MODULES)}")
    reasons = []
    for fl in candidates:
        try:
            return importlib.import_module(FLAVOUR_MODULES[fl]), fl
        except Exception as e:  # noqa: BLE001 - a broken install raises OSError/RuntimeError, not only ImportError
            reasons.append(f"{fl}: {one_line(e, 160, with_type=False) or type(e).__name__}")
    raise MissingExtraError(
        f"no TensorRT flavour importable ({'; '.join(reasons)}); install one with: "
        + " or ".join(_INSTALL_HINTS[c] for c in candidates)
    )


def check_compatible(entry: dict[str, Any] | None, flavour: str, version: str, gpu: dict[str, Any]) -> None:
    """Raise BackendUnavailable when an engine described by `entry` (its build record) cannot run with
    `flavour` `version` on `gpu`. Pure: testable without a GPU."""
    cc = str(gpu["compute_capability"])
    if flavour == "tensorrt-rtx" and cc.split(".")[0] == "9":
        raise BackendUnavailable(
            f"TensorRT-RTX engines do not run on Hopper GPUs ({gpu.get('name', 'GPU')}, "
            f"compute capability {cc}); build the engine with TensorRT (flavour tensorrt) there"
        )
    if not entry:
        return
    built_flavour, built_version = entry.get("flavour"), entry.get("version")
    if built_flavour and built_flavour != flavour:
        raise BackendUnavailable(
            f"engine was built by {built_flavour} {built_version}, but {flavour} {version} "
            f"is the flavour in use; rebuild the engine or install {built_flavour}"
        )
    if built_version and str(built_version) != str(version):
        raise BackendUnavailable(
            f"engine was built by {built_flavour or flavour} {built_version}, installed is "
            f"{version}; TensorRT engines only load in the version that built them: rebuild it"
        )
    targets = [str(t) for t in entry.get("compute_capabilities") or []]
    if targets and cc not in targets:
        raise BackendUnavailable(
            f"engine targets compute capabilities {targets}, this GPU ({gpu.get('name', 'GPU')}) "
            f"is {cc}; rebuild it for {cc}"
        )


def _torch_dtype(trt, dt):
    import torch

    table = {
        "FLOAT": torch.float32,
        "HALF": torch.float16,
        "BF16": torch.bfloat16,
        "INT32": torch.int32,
        "INT64": torch.int64,
        "INT8": torch.int8,
        "UINT8": torch.uint8,
        "BOOL": torch.bool,
    }
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


def engine_precision(entry: dict[str, Any]) -> str:
    """The precision-table key an engine's outputs are judged by: an fp32 engine built with TF32
    allowed (TensorRT's default) computes in TF32."""
    prec = entry.get("precision", "fp32")
    if prec == "fp32" and (entry.get("tf32") or {}).get("effective") is not False:
        return "tf32"
    return prec


def engine_spec(entry: dict[str, Any]) -> BackendSpec:
    """The identity of the backend that runs the engine described by its build record."""
    return BackendSpec(entry.get("flavour") or "tensorrt", "cuda", engine_precision(entry))


class TensorRTBackend(Backend):
    """Runs one engine file. `entry` is its build record (manifest "engines" entry): flavour, version,
    precision, TF32, target compute capabilities and sha256 are checked before the engine is loaded."""

    copies_in_run = True
    input_device = "cpu"

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        engine_path: str | Path,
        entry: dict[str, Any] | None = None,
        cuda_graph: bool = False,
        *,
        kernel_specialization: str = "eager",
    ):
        if kernel_specialization not in RTX_KERNEL_STRATEGIES:
            raise ValueError(f"kernel_specialization must be one of {RTX_KERNEL_STRATEGIES}")
        self.entry = dict(entry or {})
        super().__init__(engine_spec(self.entry), input_shape)
        self.engine_path = Path(engine_path)
        self.cuda_graph = bool(cuda_graph)
        self.kernel_specialization_wanted = kernel_specialization
        self._stream = None

    @property
    def stream(self) -> Any:
        return self._stream

    @property
    def batch_profiles(self) -> tuple[tuple[int, int], ...] | None:
        """From the build record, so parity can plan its batches before the engine is loaded."""
        profiles = self.entry.get("profiles")
        return tuple((int(p["min"]), int(p["max"])) for p in profiles) if profiles else None

    @property
    def artifact(self) -> Path:
        return self.engine_path

    def unavailable_reason(self) -> str | None:
        gpu = cuda_gpu()
        if gpu is None:
            return (
                "TensorRT needs a CUDA GPU and torch sees none (torch.cuda.is_available() is False); "
                "engines can be built here (TensorRT-RTX) but not run"
            )
        try:
            trt, fl = import_tensorrt(self.spec.runtime)
            check_compatible(self.entry, fl, str(trt.__version__), gpu)
        except (MissingExtraError, BackendUnavailable) as e:
            return str(e)
        if not self.engine_path.is_file():
            return f"TensorRT engine not found: {self.engine_path}"
        return None

    def _activate(self) -> None:
        import torch

        trt, fl = import_tensorrt(self.spec.runtime)
        gpu = cuda_gpu()
        verify_artifact(
            self.engine_path, self.entry.get("engine_sha256"), record="its build record", remedy="rebuild it"
        )
        self.trt, self.flavour, self.version, self.gpu = trt, fl, str(trt.__version__), gpu
        torch.cuda.set_device(0)
        torch.cuda.init()  # torch creates (and owns) the primary CUDA context before TensorRT touches the GPU
        self._stream = torch.cuda.Stream()
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        blob = self.engine_path.read_bytes()
        self._check_validity(blob)
        self.engine = self.runtime.deserialize_cuda_engine(blob)
        if self.engine is None:
            raise BackendBroken(
                f"{fl} {self.version} could not deserialize {self.engine_path.name} on {gpu['name']} "
                f"(CC {gpu['compute_capability']})"
            )
        del blob

        self.graph_mode = "off"
        self.kernel_specialization = None
        if fl == "tensorrt-rtx" and hasattr(self.engine, "create_runtime_config"):
            rc = self.engine.create_runtime_config()
            strategy = getattr(trt, "DynamicShapesKernelSpecializationStrategy", None)
            if strategy is not None:
                rc.dynamic_shapes_kernel_specialization_strategy = getattr(
                    strategy, self.kernel_specialization_wanted.upper()
                )
                self.kernel_specialization = self.kernel_specialization_wanted
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
            raise BackendUnavailable(
                f"{fl} could not create an execution context for {self.engine_path.name} (out of GPU memory?)"
            )

        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        if len(self.input_names) != 1 or not self.output_names:
            raise BackendBroken(
                f"{self.engine_path.name} has inputs {self.input_names} and outputs "
                f"{self.output_names}; expected one image input and a logits output"
            )
        self.input_name = self.input_names[0]
        self.output_name = "logits" if "logits" in self.output_names else self.output_names[0]
        self.dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}
        self.profiles = []
        for k in range(self.engine.num_optimization_profiles):
            lo, opt, hi = (tuple(s) for s in self.engine.get_tensor_profile_shape(self.input_name, k))
            self.profiles.append({"min": lo, "opt": opt, "max": hi})
        self.engine_input_shape = tuple(self.engine.get_tensor_shape(self.input_name))  # (-1, C, H, W)
        self._slots: dict[tuple[int, ...], _Slot] = {}
        self._bound: _Slot | None = None
        self._profile = 0

    def _deactivate(self) -> None:
        # Tolerates a half-made state (plain assignments only): a failed _activate() may have stopped
        # anywhere. The order frees captured graphs and buffers, then the context before its engine.
        self._slots = {}
        self._bound = None
        self.context = None
        self._runtime_config = None
        self.engine = None
        self.runtime = None
        self._stream = None

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
            raise BackendUnavailable(
                f"{self.flavour} {self.version} reports {self.engine_path.name} invalid here "
                f"({', '.join(reasons) or diagnostics}) on {self.gpu['name']}"
            )

    def _profile_for(self, batch: int) -> int:
        for k, p in enumerate(self.profiles):
            if p["min"][0] <= batch <= p["max"][0]:
                return k
        ranges = [f"{p['min'][0]}..{p['max'][0]}" for p in self.profiles]
        raise ValueError(f"batch size {batch} outside the engine's optimization profiles {ranges}")

    def _bind(self, slot: _Slot) -> None:
        if slot.profile != self._profile:
            if not self.context.set_optimization_profile_async(slot.profile, self._stream.cuda_stream):
                raise RuntimeError(f"could not switch to optimization profile {slot.profile}")
            self._profile = slot.profile
        if not self.context.set_input_shape(self.input_name, slot.shape):
            raise RuntimeError(f"TensorRT rejected input shape {slot.shape}")
        for name, t in slot.tensors.items():
            if not self.context.set_tensor_address(name, t.data_ptr()):
                raise RuntimeError(f"TensorRT rejected the address of tensor {name!r}")
        self._bound = slot

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self._stream.cuda_stream):
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
            self.context.set_optimization_profile_async(slot.profile, self._stream.cuda_stream)
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
            with torch.cuda.stream(self._stream):
                tensors[self.input_name].zero_()
                self._execute()  # warm-up: lets TensorRT finish shape-dependent setup before capture
            self._stream.synchronize()
            capturable = getattr(self.context, "is_stream_capturable", None)
            if capturable is None or capturable(self._stream.cuda_stream):
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=self._stream):
                    self._execute()
                slot.graph = graph
            else:
                self.graph_mode = "off (context reports the stream is not capturable)"
        self._slots[shape] = slot
        return slot

    # --------------------------------------------------------------------------------------- API

    def _run(self, batch: np.ndarray) -> np.ndarray:
        import torch

        x = batch
        want = self.engine_input_shape[1:]
        if any(w not in (-1, d) for w, d in zip(want, x.shape[1:])):
            raise ValueError(f"input batch shape {x.shape} does not fit the engine input {self.engine_input_shape}")
        slot = self._slot(tuple(int(d) for d in x.shape))
        if self._bound is not slot:
            self._bind(slot)
        slot.host_in.copy_(torch.from_numpy(x))  # float32 -> the engine's input type, on the CPU
        with torch.cuda.stream(self._stream):
            slot.tensors[self.input_name].copy_(slot.host_in, non_blocking=True)
            if slot.graph is not None:
                slot.graph.replay()
            else:
                self._execute()
            out = slot.tensors[self.output_name]
            slot.host_out.copy_(out if out.dtype == torch.float32 else out.float(), non_blocking=True)
        self._stream.synchronize()
        return slot.host_out.numpy().copy()

    def describe(self) -> dict[str, Any]:
        d = {**super().describe(), "engine": self.engine_path.name, "built_by": self.entry.get("version")}
        if self.active:
            d.update(
                version=self.version,
                gpu=self.gpu["name"],
                compute_capability=self.gpu["compute_capability"],
                cuda_graph=self.graph_mode,
                rtx_kernel_specialization=self.kernel_specialization,
                profiles=[f"{p['min'][0]}:{p['opt'][0]}:{p['max'][0]}" for p in self.profiles],
            )
        return d


__all__ = [
    "FLAVOUR_MODULES",
    "TensorRTBackend",
    "check_compatible",
    "engine_precision",
    "engine_spec",
    "import_tensorrt",
]
