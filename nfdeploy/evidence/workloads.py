"""What the suite runs on: the relocated digits export, nf_resnet50 with seeded random weights (a torch-only
export for phases 1-2, an ONNX export for phase 3), and the folded twin with the other norm as torch backends."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from nfdeploy.artifacts import InputSpec, Manifest, ModelSource, sha256_file
from nfdeploy.artifacts.run_dir import WEIGHTS, load_run_model
from nfdeploy.check.backends import ExportSource, bn_twin
from nfdeploy.fold import fold_model
from nfdeploy.precision import PRECISIONS
from nfdeploy.runtime.base import BackendSpec
from nfdeploy.runtime.torch_backend import TorchBackend


def write_torch_only_export(run_dir: Path, export_dir: Path, reason: str) -> Path:
    """An export dir with a manifest and no ONNX file, so parity and bench can run the torch backends of
    a run when ONNX export is impossible here. The manifest says why it holds no graph."""
    model, resolved = load_run_model(run_dir)
    cfg = model.cfg
    dataset = resolved["dataset"]
    manifest = Manifest(
        model=resolved["recipe"]["model"]["name"],
        norm=cfg.norm,
        input=InputSpec(
            shape=["batch", cfg.in_chans, cfg.input_size, cfg.input_size],
            mean=dataset.get("mean"),
            std=dataset.get("std"),
            class_names=dataset.get("class_names"),
            dataset=dataset.get("name"),
        ),
        source=ModelSource(
            kind="run",
            run_dir=str(run_dir.resolve()),
            weights=WEIGHTS,
            weights_sha256=sha256_file(run_dir / WEIGHTS),
            model_config=asdict(cfg),
        ),
        onnx={},
        details={"note": f"torch only, not exported: {reason}"},
    )
    export_dir.mkdir(parents=True, exist_ok=True)
    manifest.write(export_dir)
    return export_dir


def export_onnx(
    run_dir: Path, export_dir: Path, log: Callable[[str], None], *, preset: str = "default", **overrides
) -> Path:
    """Export a run (nfdeploy.export's preset `preset`, overridden by `overrides`: precisions, check, ...)."""
    from nfdeploy.export import OnnxOverrides, export_options, export_run

    export_run(run_dir, export_dir, export_options(preset, OnnxOverrides(**overrides)), log=log)
    return export_dir


def twin_backends(
    source: ExportSource, precisions: Sequence[str], modes: Sequence[str], device: str
) -> list[TorchBackend]:
    """The folded twin with the other norm (backends.bn_twin, randomized; its speed and its batch invariance
    in eval mode do not depend on the constants' values) as torch backends named ...-bn-folded-MODE."""
    twin64 = bn_twin(source, norm="other", randomized=True).double()
    other = twin64.cfg.norm
    cache: dict[torch.dtype, torch.nn.Module] = {}

    def folded(dtype: torch.dtype) -> torch.nn.Module:
        if dtype not in cache:
            cache[dtype] = fold_model(twin64, dtype=dtype)[0].eval()
        return cache[dtype]

    out = []
    for prec in precisions:
        for mode in modes:
            spec = BackendSpec("torch", device, prec, f"{other}-folded", mode if device == "cuda" else "")
            out.append(TorchBackend(spec, source.input_shape, lambda d=PRECISIONS[prec].torch_dtype: folded(d)))
    return out


__all__ = ["export_onnx", "twin_backends", "write_torch_only_export"]
