"""ONNX Runtime backend: CPU EP, or the CUDA EP (onnxruntime-gpu) with IO binding."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from nfdeploy.errors import MissingExtraError, one_line, require
from nfdeploy.runtime.base import Backend, BackendBroken, BackendSpec, BackendUnavailable, verify_artifact

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
# Both wheels install the same `onnxruntime` module; whichever was installed last wins, so with both in one
# environment the CUDA EP may be missing or half there. nfdeploy[onnx] brings the first, nfdeploy[gpu] the second.
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu")


def installed_ort_distributions() -> list[str]:
    """Which of ORT_DISTRIBUTIONS are installed (package metadata, not the module: they share one)."""
    import importlib.metadata as md

    out = []
    for dist in ORT_DISTRIBUTIONS:
        try:
            md.version(dist)
            out.append(dist)
        except md.PackageNotFoundError:
            pass
    return out


def shadowing_note(installed: list[str]) -> str:
    """The sentence a CUDA reason ends with when both ONNX Runtime distributions are installed, else ""."""
    if len(installed) < 2:
        return ""
    return (
        "; both onnxruntime and onnxruntime-gpu are installed and shadow each other (one `onnxruntime` "
        "module): uninstall both, then install only onnxruntime-gpu (nfdeploy[gpu]) in a GPU environment"
    )


def _ort():
    ort = require("onnxruntime", "onnx")
    if hasattr(ort, "preload_dlls"):
        try:  # onnxruntime-gpu finds the CUDA/cuDNN libraries that torch's wheels brought
            ort.preload_dlls()
        except Exception:  # noqa: BLE001 - a failed preload shows up as a missing provider
            pass
    return ort


@contextlib.contextmanager
def ort_threads_limited(threads: int = 1) -> Iterator[None]:
    """Every ONNX Runtime session made inside the block, in this process, runs on `threads` intra-op and inter-op
    threads, whatever its maker asked: nfdeploy's and those onnxruntime.quantization makes for itself (its
    calibrator takes no options). For studies that must hold a shared machine's cores to one thread."""
    ort = _ort()
    from onnxruntime.capi import onnxruntime_inference_collection as coll

    made = coll.InferenceSession.__init__

    def init(self, path_or_bytes, sess_options=None, *a, **k):
        sess_options = sess_options or ort.SessionOptions()
        sess_options.intra_op_num_threads = threads
        sess_options.inter_op_num_threads = threads
        made(self, path_or_bytes, sess_options, *a, **k)

    coll.InferenceSession.__init__ = init
    try:
        yield
    finally:
        coll.InferenceSession.__init__ = made


class OrtBackend(Backend):
    """Runs the ONNX file `path` on spec.device. On CUDA, spec.precision "tf32" runs the fp32 graph
    with TF32 on (the CUDA EP's default), "fp32" with TF32 off: nfdeploy always sets it explicitly.
    `profile_prefix`: ONNX Runtime's profiler records every run into a JSON trace named from it, whose path
    `session.end_profiling()` returns (None: no profiling, the default). `pixels`: the file is an image-input graph
    (uint8 pixel batches, normalized inside)."""

    def __init__(
        self,
        spec: BackendSpec,
        input_shape: tuple[int, int, int],
        path: str | Path,
        threads: int | None = None,
        sha256: str | None = None,
        *,
        profile_prefix: str | Path | None = None,
        pixels: bool = False,
    ):
        if spec.runtime != "onnxruntime":
            raise ValueError(f"OrtBackend needs runtime 'onnxruntime', got {spec.runtime!r}")
        super().__init__(spec, input_shape)
        self.path = Path(path)
        self.threads = threads
        self.sha256 = sha256  # the digest the file must have (its manifest's): checked when the session is made
        self.spinning = False  # intra-op threads spin-wait after a run (ORT's default) only when set before activate()
        self.profile_prefix = profile_prefix
        self.takes_pixels = pixels
        self.copies_in_run = spec.device == "cuda"
        self.session = None

    @property
    def artifact(self) -> Path:
        return self.path

    def unavailable_reason(self) -> str | None:
        try:
            ort = _ort()
        except MissingExtraError as e:
            return str(e)
        provider = PROVIDERS[self.device]
        shadowing = shadowing_note(installed_ort_distributions()) if self.device == "cuda" else ""
        if shadowing:  # files of one wheel overwrite the other's: which CUDA EP (if any) would run is not knowable
            return "ONNX Runtime CUDA EP not trusted" + shadowing
        if provider not in ort.get_available_providers():
            return f"{provider} is not available (providers: {', '.join(ort.get_available_providers())})" + (
                "; for CUDA install nfdeploy[gpu]" if self.device == "cuda" else ""
            )
        if self.precision == "tf32" and self.device != "cuda":
            return "TF32 exists only on CUDA devices"
        return None  # a missing or damaged file is not "unavailable here": loading it fails (broken)

    def _activate(self) -> None:
        ort = _ort()
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if self.threads:
            opts.intra_op_num_threads = self.threads
        # ORT's intra-op threads spin after each run by default, taking the cores from whatever runs next (another
        # session in a bench round, torch, the server's other work; ONNX Runtime #17011). Off: they sleep at once.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        if self.profile_prefix is not None:
            opts.enable_profiling = True
            opts.profile_file_prefix = str(self.profile_prefix)
        cuda = self.device == "cuda"
        provider = PROVIDERS[self.device]
        providers: list[Any] = (
            [(provider, {"use_tf32": "1" if self.precision == "tf32" else "0"})] if cuda else [provider]
        )
        verify_artifact(self.path, self.sha256)
        try:
            session = ort.InferenceSession(str(self.path), sess_options=opts, providers=providers)
        except Exception as e:  # noqa: BLE001 - ORT raises its own types (Fail, InvalidGraph, NotImplemented)
            if type(e).__name__ == "NotImplemented":  # a valid graph this EP has no kernel for (bf16 Conv on CPU)
                raise BackendUnavailable(
                    f"ONNX Runtime's {provider} cannot run {self.path.name}: {one_line(e, 240, with_type=False)}"
                ) from None
            raise BackendBroken(
                f"ONNX Runtime failed to load {self.path.name}: {one_line(e, 240, with_type=False)}"
            ) from None
        if cuda and "CUDAExecutionProvider" not in session.get_providers():
            raise BackendUnavailable("the CUDA EP could not be initialised (no GPU or CUDA libraries missing)")
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name

    def _deactivate(self) -> None:
        # Tolerates a half-made state: a failed _activate() may have set nothing yet.
        self.session = None
        self.input_name = self.output_name = None

    def _run(self, batch: np.ndarray) -> np.ndarray:
        if self.device == "cuda":
            binding = self.session.io_binding()
            binding.bind_cpu_input(self.input_name, batch)
            binding.bind_output(self.output_name, "cuda")
            self.session.run_with_iobinding(binding)
            return np.asarray(binding.copy_outputs_to_cpu()[0], dtype=np.float32)
        return np.asarray(self.session.run(None, {self.input_name: batch})[0], dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "file": self.path.name,
            "threads": (self.threads or os.cpu_count()) if self.device == "cpu" else None,
            "intra_op_spinning": self.spinning if self.device == "cpu" else None,
            "providers": self.session.get_providers() if self.session is not None else None,
        }


__all__ = [
    "ORT_DISTRIBUTIONS",
    "OrtBackend",
    "PROVIDERS",
    "installed_ort_distributions",
    "ort_threads_limited",
    "shadowing_note",
]
