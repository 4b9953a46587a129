"""What the suite runs on: the carried digits bundle (relocated), nf_resnet50 with seeded random weights,
the folded BatchNorm twin as extra torch backends."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

# Bundle layout, written by bench/gpu_prepare.py on the CPU machine and carried to the GPU machine.
BUNDLE_RUN = Path("runs") / "nf_digits"
BUNDLE_EXPORT = Path("exports") / "nf_digits"
BUNDLE_INFO = "bundle.json"
R50_SEED = 0  # nf_resnet50's weights: randomize_(seed) of a fresh model, rebuilt bit-identically anywhere


def relocate_bundle(bundle: Path, dest: Path) -> tuple[Path, Path]:
    """Copy the carried run + export to `dest` and point the manifest at the copied run dir.

    A manifest names its run dir by absolute path (where it was exported); on another machine that path
    does not exist. Only manifest.json's source.run_dir changes: the ONNX files (checked against their
    sha256 by Manifest.read) and the weights (checked against weights_sha256) are the carried bytes."""
    from nfdeploy.artifacts import Manifest

    if not (bundle / BUNDLE_EXPORT / "manifest.json").is_file():
        raise FileNotFoundError(
            f"no digits bundle at {bundle} (run bench/gpu_prepare.py on the CPU machine and carry its folder)"
        )
    run, export = dest / BUNDLE_RUN, dest / BUNDLE_EXPORT
    for src, dst in ((bundle / BUNDLE_RUN, run), (bundle / BUNDLE_EXPORT, export)):
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src, dst)
    manifest = Manifest.read(export, verify_files=False)
    manifest.source.run_dir = str(run.resolve())
    manifest.source.details["relocated_from"] = str(bundle.resolve())
    manifest.write(export)
    return run, export


def write_random_run(
    run_dir: Path,
    model: str = "nf_resnet50",
    input_size: int = 224,
    seed: int = R50_SEED,
    num_classes: int = 1000,
    synthetic_size: int = 160,
) -> Path:
    """A run dir (config.json + weights.safetensors, what load_run_model reads) of `model` with
    randomize_(seed) weights; its recipe's data is a synthetic dataset of the model's shape."""
    from nfdeploy.artifacts import atomic_write_json, save_tensors
    from nfdeploy.artifacts.run_dir import RUN_CONFIG, WEIGHTS
    from nfdeploy.config import load_recipe
    from nfdeploy.fold import randomize_
    from nfdeploy.models import create_model

    recipe = load_recipe(
        "nf_resnet50_imagefolder",
        {
            "model.name": model,
            "model.drop_rate": 0.0,
            "model.drop_path_rate": 0.0,
            "data.dataset": "synthetic",
            "data.path": "",
            "data.input_size": input_size,
            "data.num_classes": num_classes,
            "data.synthetic_size": synthetic_size,
            "data.in_chans": 3,
            "data.augment": False,
            "train.epochs": 1,
        },
    )
    torch.manual_seed(seed)
    net = randomize_(
        create_model(model, num_classes=num_classes, in_chans=3, input_size=input_size, **recipe.model.options),
        seed=seed,
    ).eval()
    run_dir.mkdir(parents=True, exist_ok=True)
    save_tensors(run_dir / WEIGHTS, net.state_dict(), metadata={"note": f"random weights (randomize_, seed {seed})"})
    atomic_write_json(
        run_dir / RUN_CONFIG,
        {
            "recipe": recipe.to_dict(),
            "model_config": asdict(net.cfg),
            "dataset": {"name": "synthetic", "mean": None, "std": None, "class_names": None},
            "environment": {"torch": torch.__version__, "note": "not trained: written by bench/gpu/sources.py"},
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )
    return run_dir


def write_torch_only_export(run_dir: Path, export_dir: Path, reason: str) -> Path:
    """An export dir with a manifest and no ONNX file, so parity and bench can run the torch backends of
    a run when ONNX export is impossible here. The manifest says why it holds no graph."""
    from nfdeploy.artifacts import atomic_write_json, sha256_file
    from nfdeploy.artifacts.run_dir import WEIGHTS, load_run_model

    model, resolved = load_run_model(run_dir)
    cfg = model.cfg
    export_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        export_dir / "manifest.json",
        {
            "format": "nfdeploy-export-v1",
            "model": resolved["recipe"]["model"]["name"],
            "norm": cfg.norm,
            "input": {
                "name": "input",
                "shape": ["batch", cfg.in_chans, cfg.input_size, cfg.input_size],
                **{k: resolved["dataset"].get(k) for k in ("mean", "std", "class_names")},
                "dataset": resolved["dataset"].get("name"),
            },
            "source": {
                "kind": "run",
                "run_dir": str(run_dir.resolve()),
                "weights": WEIGHTS,
                "weights_sha256": sha256_file(run_dir / WEIGHTS),
                "model_config": asdict(cfg),
            },
            "onnx": {},
            "engines": {},
            "note": f"torch only, not exported: {reason}",
        },
    )
    return export_dir


def twin_backends(source: Any, precisions: tuple[str, ...], modes: tuple[str, ...], device: str) -> list[Any]:
    """The folded twin with the other norm (backends.bn_twin, randomized; its speed and its batch invariance
    in eval mode do not depend on the constants' values) as torch backends named ...-bn-folded-MODE."""
    from nfdeploy.check.backends import bn_twin
    from nfdeploy.fold import fold_model
    from nfdeploy.precision import PRECISIONS
    from nfdeploy.runtime.base import BackendSpec
    from nfdeploy.runtime.torch_backend import TorchBackend

    twin64 = bn_twin(source, norm="other", randomized=True).double()
    other = twin64.cfg.norm
    cache: dict[torch.dtype, torch.nn.Module] = {}

    def folded(dtype: torch.dtype):
        if dtype not in cache:
            cache[dtype] = fold_model(twin64, dtype=dtype)[0].eval()
        return cache[dtype]

    out = []
    for prec in precisions:
        for mode in modes:
            spec = BackendSpec("torch", device, prec, f"{other}-folded", mode if device == "cuda" else "")
            out.append(TorchBackend(spec, source.input_shape, lambda d=PRECISIONS[prec].torch_dtype: folded(d)))
    return out


def unfolded_backends(source: Any, precisions: tuple[str, ...], modes: tuple[str, ...]) -> list[Any]:
    """The export's unfolded model on CUDA per precision and mode (export_backends has it on CPU only)."""
    from nfdeploy.runtime.base import BackendSpec
    from nfdeploy.runtime.torch_backend import TorchBackend

    return [
        TorchBackend(BackendSpec("torch", "cuda", p, "unfolded", m), source.input_shape, lambda: source.model)
        for p in precisions
        for m in modes
    ]


def read_bundle_info(bundle: Path) -> dict[str, Any]:
    p = bundle / BUNDLE_INFO
    return json.loads(p.read_text()) if p.is_file() else {}


__all__ = [
    "BUNDLE_EXPORT",
    "BUNDLE_INFO",
    "BUNDLE_RUN",
    "R50_SEED",
    "read_bundle_info",
    "relocate_bundle",
    "twin_backends",
    "unfolded_backends",
    "write_random_run",
    "write_torch_only_export",
]
