import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_cli(
    *args: str, timeout: float = 600, env: dict | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """Run `python -m nfdeploy ARGS` in a real subprocess (the way users run it)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "nfdeploy", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=cwd or REPO,
    )


def write_recipe(
    path: Path,
    model: str = "nf_resnet_c8",
    data: dict | None = None,
    train: dict | None = None,
    model_opts: dict | None = None,
) -> Path:
    """A small synthetic-data recipe (augmentation, dropout and stochastic depth off by default)."""
    import json

    def table(d: dict) -> str:
        return "\n".join(f"{k} = {json.dumps(v)}" for k, v in d.items())

    data = {"dataset": "synthetic", "synthetic_size": 128, "input_size": 32, "augment": False, **(data or {})}
    train = {"epochs": 1, "batch_size": 32, "lr": 0.1, "warmup_epochs": 0.0, "threads": 1, **(train or {})}
    model_opts = {"drop_rate": 0.0, "drop_path_rate": 0.0, **(model_opts or {})}
    path.write_text(
        f'[model]\nname = "{model}"\n{table(model_opts)}\n\n[data]\n{table(data)}\n\n[train]\n{table(train)}\n'
    )
    return path


def model_manifest(model: str, shape: tuple[int, int, int], model_config: dict | None = None):
    """The manifest of an export that has no files on disk: enough for an in-memory ExportSource."""
    from nfdeploy.artifacts import InputSpec, Manifest, ModelSource

    return Manifest(
        model=model,
        norm=(model_config or {}).get("norm", "nf"),
        input=InputSpec(shape=["batch", *shape]),
        source=ModelSource(kind="run", model_config=model_config),
        onnx={},
    )


@pytest.fixture
def cli():
    return run_cli
