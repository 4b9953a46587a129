"""A run dir without training: a model with seeded random constants (fold.randomize_), written as training
writes one (config.json + weights.safetensors, atomically), so export, parity and bench read it like any run.
The same seed rebuilds the same weights bit for bit on any machine (the GPU suite's nf_resnet50, the CPU
benches of nf_resnet50)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import torch

from nfdeploy.artifacts import atomic_write_json, save_tensors
from nfdeploy.artifacts.run_dir import RUN_CONFIG, WEIGHTS
from nfdeploy.config import load_recipe
from nfdeploy.fold import randomize_
from nfdeploy.models import create_model

RANDOM_RUN_SEED = 0


def write_random_run(
    run_dir: Path,
    model: str = "nf_resnet50",
    input_size: int = 224,
    seed: int = RANDOM_RUN_SEED,
    num_classes: int = 1000,
    synthetic_size: int = 160,
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
) -> Path:
    """A run dir (config.json + weights.safetensors, what load_run_model reads) of `model` with
    randomize_(seed) weights; its recipe's data is a synthetic dataset of the model's shape. `normalization`
    (mean, std): the per-channel normalization its images are recorded to take (e.g. ImageNet's), so that its
    export records a preprocessing and can have an image-input graph; None: none recorded."""
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
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_tensors(run_dir / WEIGHTS, net.state_dict(), metadata={"note": f"random weights (randomize_, seed {seed})"})
    atomic_write_json(
        run_dir / RUN_CONFIG,
        {
            "recipe": recipe.to_dict(),
            "model_config": asdict(net.cfg),
            "dataset": {
                "name": "synthetic",
                "mean": list(normalization[0]) if normalization else None,
                "std": list(normalization[1]) if normalization else None,
                "class_names": None,
            },
            "environment": {"torch": torch.__version__, "note": "not trained: written by nfdeploy.train.random_run"},
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )
    return run_dir


__all__ = ["RANDOM_RUN_SEED", "write_random_run"]
