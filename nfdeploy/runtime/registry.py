"""Every backend that can run an export dir, or the reason it cannot run here.

The list is the same for parity and latency: torch on CPU (float64 reference = the unfolded model;
float32 unfolded and folded), torch on CUDA (folded; fp32 with TF32 off, TF32, fp16, bf16; eager,
torch.compile, CUDA graph), ONNX Runtime (CPU EP per ONNX precision; CUDA EP with IO binding) and
TensorRT engines. A backend that cannot run is returned as `Skipped` with its reason, never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from nfdeploy.artifacts import ArtifactError
from nfdeploy.runtime.base import Backend, BackendUnavailable

REFERENCE = "torch-cpu-fp64-unfolded"


@dataclass
class Skipped:
    name: str
    reason: str

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "status": "skipped", "reason": self.reason}


@dataclass
class ExportSource:
    """What an export dir was made from: the unfolded model (the reference) and its data."""

    manifest: dict[str, Any]
    model: nn.Module  # unfolded, eval, float32
    export_dir: Path
    resolved: dict[str, Any] | None = None  # the run's config.json, when the export came from a run

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.manifest["input"]["shape"][1:])


def load_export_source(export_dir: str | Path) -> ExportSource:
    """Verify the export dir against its manifest and rebuild the unfolded model it came from."""
    from nfdeploy.export import load_manifest

    export_dir = Path(export_dir)
    manifest = load_manifest(export_dir)
    src = manifest["source"]
    if src.get("kind") == "run":
        from nfdeploy.artifacts import sha256_file
        from nfdeploy.train import load_run_model

        run_dir = Path(src["run_dir"])
        model, resolved = load_run_model(run_dir)
        if sha256_file(run_dir / src["weights"]) != src["weights_sha256"]:
            raise ArtifactError(f"weights in {run_dir} changed since the export (sha256 differs): re-export")
        return ExportSource(manifest, model.float().eval(), export_dir, resolved)
    if src.get("kind") == "timm" and src.get("checkpoint"):
        from nfdeploy.interop.timm import create_timm_model

        return ExportSource(manifest, create_timm_model(src["timm_model"], src["checkpoint"]).float().eval(), export_dir)
    raise ArtifactError(f"{export_dir}: the reference model cannot be rebuilt (source {src.get('kind')!r} without "
                        "weights on disk); export from a run dir or a timm checkpoint")


def _folded(source: ExportSource, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Fold a float64 copy of the source model (Module.double() works in place: never on the shared one)."""
    import copy

    model64 = copy.deepcopy(source.model).double()
    if source.manifest["source"].get("kind") == "timm":
        from nfdeploy.interop.timm import fold_timm_model

        return fold_timm_model(model64, input_size=source.input_shape[1:], dtype=dtype)[0]
    from nfdeploy.fold import fold_model

    return fold_model(model64, dtype=dtype)[0]


def backend_factories(source: ExportSource, *, cuda: bool | None = None, compile: bool = True,
                      tensorrt: bool = True) -> list[tuple[str, Callable[[], Backend]]]:
    """(name, factory) for every backend; a factory raises BackendUnavailable when it cannot run."""
    from nfdeploy.runtime.ort import OrtBackend
    from nfdeploy.runtime.torch_backend import TorchBackend

    m, d = source.manifest, source.export_dir
    f: list[tuple[str, Callable[[], Backend]]] = [
        (REFERENCE, lambda: TorchBackend(source.model, REFERENCE, "cpu", "fp64")),
        ("torch-cpu-fp32-unfolded", lambda: TorchBackend(source.model, "torch-cpu-fp32-unfolded", "cpu", "fp32")),
        ("torch-cpu-fp32-folded", lambda: TorchBackend(_folded(source), "torch-cpu-fp32-folded", "cpu", "fp32")),
    ]
    use_cuda = torch.cuda.is_available() if cuda is None else cuda
    for prec in ("fp32", "tf32", "fp16", "bf16"):
        for mode in ("eager", "compile", "cudagraph"):
            if mode == "compile" and not compile:
                continue
            name = f"torch-cuda-{prec}-folded-{mode}"

            def make(prec=prec, mode=mode, name=name) -> Backend:
                if not use_cuda:
                    raise BackendUnavailable("no CUDA device visible to torch")
                dt = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(prec, torch.float32)
                return TorchBackend(_folded(source, dt), name, "cuda", prec, compile=mode == "compile",
                                    cuda_graph=mode == "cudagraph")

            f.append((name, make))
    for prec, entry in m["onnx"].items():
        path = d / entry["file"]
        f.append((f"onnxruntime-cpu-{prec}", lambda path=path, prec=prec: OrtBackend(path, precision=prec)))
        f.append((f"onnxruntime-cuda-{prec}", lambda path=path, prec=prec: OrtBackend(
            path, provider="CUDAExecutionProvider", precision=prec)))
        if prec == "fp32":
            f.append(("onnxruntime-cuda-tf32", lambda path=path: OrtBackend(
                path, provider="CUDAExecutionProvider", precision="fp32", tf32=True)))
    if tensorrt:
        engines = m.get("engines") or {}
        if not engines:
            def no_engines() -> Backend:
                raise BackendUnavailable("no engines in this export (export with --trt)")

            f.append(("tensorrt", no_engines))
        for prec, entry in engines.items():
            def make_trt(entry=entry, prec=prec) -> Backend:
                from nfdeploy.runtime.tensorrt import TensorRTBackend

                b = TensorRTBackend(d / entry["file"], entry)
                b.precision = prec
                return b

            f.append((f"tensorrt-{prec}", make_trt))
    return f


def make_backends(source: ExportSource, only: list[str] | None = None, **kw) -> list[Backend | Skipped]:
    out: list[Backend | Skipped] = []
    for name, factory in backend_factories(source, **kw):
        if only and name != REFERENCE and not any(o in name for o in only):
            continue
        try:
            out.append(factory())
        except BackendUnavailable as e:
            out.append(Skipped(name, str(e)))
        except ImportError as e:
            out.append(Skipped(name, f"missing dependency: {e}"))
    return out
