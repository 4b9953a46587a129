"""The backends of an export dir: read its manifest, rebuild the reference, make every runtime.

One list for `nfdeploy backends`, parity, bench and the GPU suite: torch on CPU (float64 reference =
the unfolded model; float32 unfolded and folded), torch on CUDA (folded; fp32 with TF32 off, TF32,
fp16, bf16; eager, torch.compile, CUDA graph), ONNX Runtime (CPU EP per ONNX precision; CUDA EP per
ONNX precision, plus the fp32 graph with TF32), OpenVINO CPU (fp32, bf16, the int8 forms) and one
TensorRT backend per engine. Every backend is constructed (cheap, nothing on a device) whether or not
it can run here; `unavailable_reason()` says why one cannot. Activation can still refuse with a reason
(BackendUnavailable: skipped) or fail on the file itself (BackendBroken: a failure).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nfdeploy.artifacts import ArtifactError, Manifest, sha256_file
from nfdeploy.artifacts.run_dir import load_run_model
from nfdeploy.errors import UserError
from nfdeploy.precision import PRECISIONS
from nfdeploy.runtime.base import TORCH_MODES, Backend, BackendSpec, name_matches
from nfdeploy.runtime.openvino import OpenVinoBackend
from nfdeploy.runtime.ort import OrtBackend
from nfdeploy.runtime.tensorrt import TensorRTBackend
from nfdeploy.runtime.torch_backend import TorchBackend

REFERENCE_SPEC = BackendSpec("torch", "cpu", "fp64", "unfolded")
REFERENCE = REFERENCE_SPEC.name


class BackendSelectionError(UserError, ValueError):
    """--only matched no backend; one line."""


@dataclass
class ExportSource:
    """What an export dir was made from: the unfolded model (the reference) and its data. The folded
    model is made once per dtype and shared by every backend that runs it."""

    manifest: Manifest
    model: nn.Module | None  # unfolded, eval, float32; None when only file-based backends are needed (export_backend)
    export_dir: Path
    resolved: dict[str, Any] | None = None  # the run's config.json, when the export came from a run
    _folded_cache: dict[torch.dtype, nn.Module] = field(default_factory=dict, repr=False)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.manifest.input.chw

    @property
    def kind(self) -> str:
        return self.manifest.source.kind

    def unfolded(self) -> nn.Module:
        if self.model is None:
            raise ArtifactError(
                f"{self.export_dir}: this source was read without its model (load_export_source rebuilds it)"
            )
        return self.model

    def folded(self, dtype: torch.dtype = torch.float32) -> nn.Module:
        """The folded model in `dtype` (folded in float64 from a copy: the shared model is never changed)."""
        if dtype not in self._folded_cache:
            model64 = copy.deepcopy(self.unfolded()).double()
            if self.kind == "timm":
                from nfdeploy.interop.timm import fold_timm_model

                net = fold_timm_model(model64, input_size=self.input_shape[1:], dtype=dtype)[0]
            else:
                from nfdeploy.fold import fold_model

                net = fold_model(model64, dtype=dtype)[0]
            self._folded_cache[dtype] = net.eval()
        return self._folded_cache[dtype]


def load_export_source(export_dir: str | Path, *, run_dir: str | Path | None = None) -> ExportSource:
    """Read the export dir's manifest and rebuild the unfolded model it came from (its weights checked
    against the manifest). Each ONNX file and engine is checked against its sha256 by its backend when it
    loads: a damaged file is that backend's failure ("broken"), and the others still run. `run_dir`: where
    the run's config.json and weights are, when not where the manifest says (a packaged Triton model)."""
    export_dir = Path(export_dir)
    manifest = Manifest.read(export_dir, verify_files=False)
    src = manifest.source
    if src.kind == "run":
        run_dir = Path(run_dir or src.run_dir)
        if not run_dir.is_dir() and src.run_dir_relative:  # run and export dirs copied elsewhere together
            run_dir = (export_dir / src.run_dir_relative).resolve()
        model, resolved = load_run_model(run_dir)
        if sha256_file(run_dir / src.weights) != src.weights_sha256:
            raise ArtifactError(f"weights in {run_dir} changed since the export (sha256 differs): re-export")
        return ExportSource(manifest, model.float().eval(), export_dir, resolved)
    if src.kind == "timm" and src.checkpoint:
        from nfdeploy.interop.timm import create_timm_model

        return ExportSource(manifest, create_timm_model(src.timm_model, src.checkpoint).float().eval(), export_dir)
    raise ArtifactError(
        f"{export_dir}: the reference model cannot be rebuilt (source {src.kind!r} without "
        "weights on disk); export from a run dir or a timm checkpoint"
    )


def manifest_source(export_dir: str | Path) -> ExportSource:
    """The export's manifest without its model: enough to list its backends and to run the file-based ones
    (a torch backend of such a source cannot activate; load_export_source rebuilds the model)."""
    return ExportSource(Manifest.read(export_dir, verify_files=False), None, Path(export_dir))


def export_backend(
    export_dir: str | Path, name: str, *, threads: int | None = None, run_dir: str | Path | None = None
) -> Backend:
    """One backend of an export by name, not active. Only a torch backend rebuilds the model (from the run,
    or from `run_dir`); the others need just the manifest and their own file, so a served ONNX, OpenVINO
    or TensorRT backend runs without the training run beside it."""
    source = (
        load_export_source(export_dir, run_dir=run_dir) if name.startswith("torch-") else manifest_source(export_dir)
    )
    made = [b for b in export_backends(source, compile=False, threads=threads) if b.name == name]
    if not made:
        raise BackendSelectionError(f"{name}: no such backend of {export_dir}")
    return made[0]


def bn_twin(source: ExportSource, *, norm: str = "bn", randomized: bool = False, seed: int = 0) -> nn.Module | None:
    """The export's model with `norm` ("bn", or "other": the norm the export does not use) in place of its own:
    same topology and widths, float32, eval mode; None for a source without a model_config (timm).

    The one twin of the package: parity's batch-invariance contrast (default init) and bench's speed
    contrast (`randomized`: randomize_ constants, so folding is not vacuous; its speed does not depend on
    their values). Built from `seed` inside torch.random.fork_rng: the caller's global RNG is untouched."""
    from dataclasses import replace

    from nfdeploy.fold import randomize_
    from nfdeploy.models.nf_resnet import NFResNet, NFResNetCfg

    cfg = source.manifest.source.model_config
    if not cfg:
        return None
    cfg = NFResNetCfg.from_dict(cfg)
    twin_cfg = cfg.twin() if norm == "other" else replace(cfg, norm=norm)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        twin = NFResNet(twin_cfg)
    if randomized:
        randomize_(twin, seed=seed)  # its own torch.Generator
    return twin.float().eval()


def twin_runner(twin: nn.Module, mode: str) -> Callable[[np.ndarray], np.ndarray]:
    """run(batch) of the BN twin in "train" mode (BN normalises with each batch's own statistics) or "eval" mode.

    Each runner holds its own copy: a train-mode runner updates running statistics only in its copy, so
    eval-mode results never depend on whether train mode ran first, and two runners never switch each
    other's mode. In train mode only the norm layers train (dropout and drop-path stay off): the contrast
    is the batch statistics, and no call draws from the global RNG."""
    if mode not in ("train", "eval"):
        raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
    net = copy.deepcopy(twin).eval()
    if mode == "train":
        for m in net.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.train()

    @torch.no_grad()
    def run(batch: np.ndarray) -> np.ndarray:
        return net(torch.from_numpy(batch)).numpy()

    return run


def default_report_dir(export_dir: str | Path) -> Path:
    """Reports go beside the export dir, never inside it: an export dir is replaced whole on re-export."""
    export_dir = Path(export_dir)
    return export_dir.parent / f"{export_dir.name}-reports"


def torch_backend(source: ExportSource, spec: BackendSpec) -> TorchBackend:
    """A torch backend of the source: the unfolded model or the folded one in the spec's dtype."""
    dtype = PRECISIONS[spec.precision].torch_dtype
    model = source.unfolded if spec.variant == "unfolded" else (lambda: source.folded(dtype))
    return TorchBackend(spec, source.input_shape, model)


def export_backends(
    source: ExportSource, *, compile: bool = True, tensorrt: bool = True, threads: int | None = None
) -> list[Backend]:
    """Every backend of the export, the reference first; none active. `threads`: ONNX Runtime CPU intra-op
    threads and OpenVINO's CPU threads (None: each runtime's default; torch's CPU threads are process-wide,
    set by the caller)."""
    shape = source.input_shape
    out: list[Backend] = [
        torch_backend(source, REFERENCE_SPEC),
        torch_backend(source, BackendSpec("torch", "cpu", "fp32", "unfolded")),
        torch_backend(source, BackendSpec("torch", "cpu", "fp32", "folded")),
    ]
    for prec in ("fp32", "tf32", "fp16", "bf16"):
        for mode in TORCH_MODES:
            if mode != "compile" or compile:
                out.append(torch_backend(source, BackendSpec("torch", "cuda", prec, "folded", mode)))
    for device in ("cpu", "cuda"):
        for prec, entry in source.manifest.onnx.items():
            path = source.export_dir / entry.file
            digest = entry.sha256
            out.append(
                OrtBackend(BackendSpec("onnxruntime", device, prec), shape, path, threads=threads, sha256=digest)
            )
            if prec == "fp32" and device == "cuda":
                out.append(OrtBackend(BackendSpec("onnxruntime", device, "tf32"), shape, path, sha256=digest))
    out += openvino_backends(source, threads=threads)
    out += image_input_backends(source, threads=threads)
    if tensorrt:
        for entry in source.manifest.engines.values():
            out.append(TensorRTBackend(shape, source.export_dir / entry.file, entry.to_dict()))
    names = [b.name for b in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:  # two backends under one name would merge their rows in every report
        raise RuntimeError(f"backend names are not unique: {dupes}")
    return out


def openvino_backends(source: ExportSource, *, threads: int | None = None) -> list[Backend]:
    """OpenVINO's CPU plugin on the export's ONNX files: fp32 and bf16 (the bf16 hint) from the fp32 graph, and
    each int8 Q/DQ form from its own file. The ONNX fp16/bf16 files are not offered: the plugin's precision is set
    by its hint, not by the file's storage type, so they would duplicate the names above."""
    onnx = source.manifest.onnx
    # (backend precision, the ONNX graph it reads)
    graphs = (("fp32", "fp32"), ("bf16", "fp32"), ("int8", "int8"), ("int8-ort", "int8-ort"))
    return [
        OpenVinoBackend(
            BackendSpec("openvino", "cpu", prec),
            source.input_shape,
            source.export_dir / onnx[graph].file,
            threads=threads,
            sha256=onnx[graph].sha256,
        )
        for prec, graph in graphs
        if graph in onnx
    ]


def image_input_backends(source: ExportSource, *, threads: int | None = None) -> list[Backend]:
    """The image-input graph (model.uint8.onnx: uint8 pixels in, the normalization inside) on ONNX Runtime (CPU,
    CUDA) and OpenVINO's CPU plugin, in fp32: named `...-fp32-uint8`; none when the export has no such graph."""
    entry = source.manifest.image_input
    if entry is None:
        return []
    path, shape, digest = source.export_dir / entry.file, source.input_shape, entry.sha256
    out: list[Backend] = [
        OrtBackend(BackendSpec("onnxruntime", dev, "fp32", "uint8"), shape, path, threads, digest, pixels=True)
        for dev in ("cpu", "cuda")
    ]
    spec = BackendSpec("openvino", "cpu", "fp32", "uint8")
    return out + [OpenVinoBackend(spec, shape, path, threads=threads, sha256=digest, pixels=True)]


def select_backends(backends: Sequence[Backend], only: Sequence[str] | None) -> list[Backend]:
    """The backends that one of `only` selects (runtime.base.name_matches: whole name parts or a glob;
    all when `only` is empty). A pattern that selects nothing is an error, naming it."""
    if not only:
        return list(backends)
    unmatched = [o for o in only if not any(name_matches(b.name, o) for b in backends)]
    if unmatched:
        raise BackendSelectionError(
            f"--only {' '.join(unmatched)} matches no backend of this export (whole "
            f"dash-separated parts, or a glob such as '*fp16*'); names: "
            f"{', '.join(b.name for b in backends)}"
        )
    return [b for b in backends if any(name_matches(b.name, o) for o in only)]


def describe_backends(backends: Sequence[Backend]) -> list[dict[str, Any]]:
    """One row per backend: identity, tolerance, and "available" or the reason it is not."""
    rows = []
    for b in backends:
        reason = b.unavailable_reason()
        rows.append(
            {
                **b.spec.describe(),
                "tolerance": b.spec.tolerance,
                "status": "available" if reason is None else "unavailable",
                "reason": reason,
            }
        )
    return rows


__all__ = [
    "REFERENCE",
    "REFERENCE_SPEC",
    "BackendSelectionError",
    "ExportSource",
    "bn_twin",
    "default_report_dir",
    "twin_runner",
    "describe_backends",
    "export_backend",
    "export_backends",
    "image_input_backends",
    "load_export_source",
    "manifest_source",
    "select_backends",
    "torch_backend",
]
