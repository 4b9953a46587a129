"""The Backend interface every runtime implements; comparison and timing code is generic over it.

A backend's identity is its `BackendSpec` (runtime, device, precision, variant, execution mode),
fixed at construction; its name is derived from it and is unique among the backends of an export.
The lifecycle follows Polygraphy's runners: construction is cheap and never touches a device;
`activate()` does the heavy setup (sessions, device copies, CUDA graphs), `run()` needs an active
backend, `deactivate()` frees what activate made. `with backend:` does both. Parity and bench hold
one backend active at a time, so GPU memory and peak-memory numbers belong to that backend alone.
"""

from __future__ import annotations

import abc
import fnmatch
import gc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nfdeploy.errors import UserError, one_line
from nfdeploy.precision import PRECISIONS, get_precision

RUNTIMES = ("torch", "onnxruntime", "openvino", "tensorrt", "tensorrt-rtx")
DEVICES = ("cpu", "cuda")
TORCH_MODES = ("eager", "compile", "cudagraph")


class BackendUnavailable(RuntimeError):
    """This backend cannot run here (no CUDA, no such module or provider); the message is the reason,
    reported as 'skipped'. Never raised for an artifact that exists but fails to load: that is BackendBroken."""


class BackendBroken(RuntimeError):
    """The artifact exists and this machine should be able to load it, but loading failed (a corrupt or
    truncated ONNX file, an engine that does not deserialize): a failure, reported as 'broken'."""


class BackendInputError(UserError, ValueError):
    """A batch that does not fit the backend's input spec; one line."""


@dataclass(frozen=True)
class BackendSpec:
    """What a backend is. `precision` is a key of the precision table and judges its outputs;
    `variant` says which model it runs where that is not the export's own graph (torch: unfolded or
    folded); `mode` is the execution mode (torch on CUDA: eager, compile or cudagraph)."""

    runtime: str
    device: str
    precision: str
    variant: str = ""
    mode: str = ""

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime {self.runtime!r} not in {RUNTIMES}")
        if self.device not in DEVICES:
            raise ValueError(f"device {self.device!r} not in {DEVICES}")
        get_precision(self.precision)

    @property
    def name(self) -> str:
        # TensorRT runs only on CUDA devices: the device would say nothing.
        parts = [self.runtime] + ([] if self.runtime.startswith("tensorrt") else [self.device])
        parts += [get_precision(self.precision).tag, self.variant, self.mode]
        return "-".join(p for p in parts if p)

    @property
    def math_mode(self) -> str:
        mode = get_precision(self.precision).math_mode
        return f"{mode} (TF32 off)" if self.precision == "fp32" and self.device == "cuda" else mode

    @property
    def tolerance(self) -> dict[str, float]:
        return get_precision(self.precision).tolerance()

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "runtime": self.runtime,
            "device": self.device,
            "precision": self.precision,
            "math_mode": self.math_mode,
            "variant": self.variant or None,
            "mode": self.mode or None,
        }


def _name_parts(name: str) -> list[str]:
    """A backend name split at dashes, keeping a precision tag that contains one whole (fp32-tf32, int8-ort),
    so `fp32` never selects a TF32 backend and `int8` never the int8-ort form. Runtimes split (`tensorrt`
    selects both TensorRT flavours, `rtx` or `tensorrt-rtx` the RTX one)."""
    compounds = [p.tag.split("-") for p in PRECISIONS.values() if "-" in p.tag]
    words, parts, i = name.split("-"), [], 0
    while i < len(words):
        hit = next((c for c in compounds if words[i : i + len(c)] == c), None)
        parts.append("-".join(hit) if hit else words[i])
        i += len(hit) if hit else 1
    return parts


def name_matches(name: str, pattern: str) -> bool:
    """Does `pattern` select the backend `name`? A glob (with * ? [) matches the whole name; otherwise the
    pattern's parts must equal a run of the name's whole parts (`onnxruntime-cpu`, `fp16`, `tensorrt-rtx`).
    The one rule for --only in parity, bench and bench --against."""
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(name, pattern)
    want, have = _name_parts(pattern), _name_parts(name)
    return any(have[i : i + len(want)] == want for i in range(len(have) - len(want) + 1))


class Backend(abc.ABC):
    """run(batch) maps a float32 N×C×H×W numpy batch to float32 logits (numpy); run_tensor maps a
    torch tensor (on `input_device`, in `input_dtype`) to a torch tensor without leaving the device
    where the runtime allows it. A backend that `takes_pixels` runs an image-input graph: its batches are
    uint8 pixels (the export's preprocessing.json says how an image becomes them) and the graph normalizes."""

    # Where run_tensor wants its input; bench allocates its input there once, outside the timing.
    input_device: str = "cpu"
    input_dtype: torch.dtype = torch.float32
    takes_pixels: bool = False
    # True when run()/run_tensor() include host<->device copies (ONNX Runtime, TensorRT on CUDA).
    copies_in_run: bool = False

    def __init__(self, spec: BackendSpec, input_shape: tuple[int, int, int]):
        self._spec = spec
        self._input_shape = tuple(int(s) for s in input_shape)
        self._active = False

    # ----------------------------------------------------------------------------- identity
    spec = property(lambda self: self._spec)
    name = property(lambda self: self._spec.name)
    device = property(lambda self: self._spec.device)
    precision = property(lambda self: self._spec.precision)
    math_mode = property(lambda self: self._spec.math_mode)
    input_shape = property(lambda self: self._input_shape)
    active = property(lambda self: self._active)

    @property
    def stream(self) -> Any:
        """The CUDA stream the runtime executes on (None: torch's current stream)."""
        return None

    def describe(self) -> dict[str, Any]:
        return self._spec.describe()

    @property
    def artifact(self) -> Path | None:
        """The file this backend runs (an ONNX file, an engine); None when it runs a model in memory (torch)."""
        return None

    @property
    def batch_profiles(self) -> tuple[tuple[int, int], ...] | None:
        """(min, max) batch sizes per optimization profile (TensorRT engines); None: any batch size."""
        return None

    def supports_batch(self, n: int) -> bool:
        profiles = self.batch_profiles
        return profiles is None or any(lo <= n <= hi for lo, hi in profiles)

    # ---------------------------------------------------------------------------- lifecycle
    def unavailable_reason(self) -> str | None:
        """Why this backend cannot run here (cheap: no session, no device memory), or None."""
        return None

    @abc.abstractmethod
    def _activate(self) -> None: ...

    @abc.abstractmethod
    def _deactivate(self) -> None: ...

    def activate(self) -> Backend:
        if not self._active:
            reason = self.unavailable_reason()
            if reason:
                raise BackendUnavailable(reason)
            try:
                self._activate()
            except BaseException as e:
                # Free whatever the partial _activate() created (sessions, engines, contexts) before
                # the next backend is activated; _deactivate() must tolerate a half-made state.
                self._release()
                if isinstance(e, (BackendUnavailable, BackendBroken)) or not isinstance(e, Exception):
                    raise
                raise BackendBroken(f"failed to load: {one_line(e, 240)}") from e
            self._active = True
        return self

    def deactivate(self) -> None:
        if self._active:
            self._active = False
            self._release()

    def _release(self) -> None:
        try:
            self._deactivate()
        finally:
            gc.collect()
            if self.device == "cuda" and torch.cuda.is_available():
                torch.cuda.empty_cache()

    def __enter__(self) -> Backend:
        return self.activate()

    def __exit__(self, *exc: Any) -> None:
        self.deactivate()

    # -------------------------------------------------------------------------------- running
    @property
    def batch_dtype(self) -> np.dtype:
        """The numpy dtype run() takes: uint8 pixels or float32 model inputs."""
        return np.dtype(np.uint8 if self.takes_pixels else np.float32)

    def check_input(self, batch: Any) -> np.ndarray:
        if not isinstance(batch, np.ndarray) or batch.dtype != self.batch_dtype:
            got = f"{batch.dtype} array" if isinstance(batch, np.ndarray) else type(batch).__name__
            raise BackendInputError(f"{self.name} takes {self.batch_dtype} numpy batches, got {got}")
        if batch.ndim != 4 or tuple(batch.shape[1:]) != self._input_shape or batch.shape[0] < 1:
            raise BackendInputError(
                f"{self.name} takes batches of shape (N, {', '.join(map(str, self._input_shape))}) "
                f"with N >= 1, got {tuple(batch.shape)}"
            )
        return np.ascontiguousarray(batch)

    def run(self, batch: np.ndarray) -> np.ndarray:
        x = self.check_input(batch)
        if not self._active:
            raise RuntimeError(f"{self.name} is not active: use `with backend:` or backend.activate()")
        return self._run(x)

    @abc.abstractmethod
    def _run(self, batch: np.ndarray) -> np.ndarray:
        """A checked, contiguous float32 batch → float32 logits on the host."""

    def run_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Default: a numpy round trip through run(); runtimes that can stay on the device override it."""
        return torch.from_numpy(self.run(x.detach().cpu().numpy().astype(self.batch_dtype, copy=False)))


def random_batch(backend: Backend, n: int, seed: int = 0) -> np.ndarray:
    """A seeded batch of what `backend.run` takes: N(0,1) float32 inputs, or uniform uint8 pixels."""
    rng = np.random.default_rng(seed)
    shape = (int(n), *backend.input_shape)
    if backend.takes_pixels:
        return rng.integers(0, 256, shape, dtype=np.uint8)
    return rng.standard_normal(shape).astype(np.float32)


def verify_artifact(
    path: Path, sha256: str | None, *, record: str = "its manifest", remedy: str = "re-export it"
) -> None:
    """A file a backend is about to load: it must exist and, when `record` holds one, have that sha256."""
    from nfdeploy.artifacts import sha256_file

    if not path.is_file():
        raise BackendBroken(f"{path} does not exist")
    if sha256 and sha256_file(path) != sha256:
        raise BackendBroken(f"{path.name} does not match {record} (sha256 differs): {remedy}")


def run_batched(backend: Backend, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Outputs of x run in chunks of at most `batch_size`, every chunk a batch size the backend accepts:
    chunks shrink to the largest size inside its profiles, and a last chunk smaller than every profile's
    minimum is padded with copies of its last sample whose outputs are dropped."""
    step = next((n for n in range(min(batch_size, len(x)), 0, -1) if backend.supports_batch(n)), None)
    if step is None:
        raise BackendInputError(
            f"{backend.name} accepts no batch size up to {min(batch_size, len(x))} (profiles {backend.batch_profiles})"
        )
    outs = []
    for i in range(0, len(x), step):
        chunk = x[i : i + step]
        n = len(chunk)
        if not backend.supports_batch(n):
            m = next(m for m in range(n + 1, step + 1) if backend.supports_batch(m))
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], m - n, axis=0)])
        outs.append(backend.run(chunk)[:n])
    return np.concatenate(outs)


__all__ = [
    "Backend",
    "BackendBroken",
    "BackendInputError",
    "BackendSpec",
    "BackendUnavailable",
    "DEVICES",
    "RUNTIMES",
    "TORCH_MODES",
    "name_matches",
    "random_batch",
    "run_batched",
    "verify_artifact",
]
