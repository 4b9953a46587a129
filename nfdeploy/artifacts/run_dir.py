"""A run dir, as training writes it and export, parity and bench read it.

RUN_DIR/weights.safetensors   final weights (EMA weights when the recipe uses EMA)
RUN_DIR/config.json           resolved recipe, model_config, dataset, environment
RUN_DIR/metrics.jsonl         one line per epoch
RUN_DIR/summary.json          final numbers
RUN_DIR/curves.png            loss and accuracy per epoch
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nfdeploy.artifacts.files import ArtifactError, load_tensors, read_json
from nfdeploy.models import NFResNet, NFResNetCfg

WEIGHTS = "weights.safetensors"
RUN_CONFIG = "config.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CURVES = "curves.png"


def load_run_model(run_dir: str | Path) -> tuple[NFResNet, dict[str, Any]]:
    """Rebuild the trained model of a run dir from config.json and weights.safetensors (eval mode)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ArtifactError(f"run dir not found: {run_dir}")
    resolved = read_json(run_dir / RUN_CONFIG, "run config")
    try:
        cfg = NFResNetCfg.from_dict(dict(resolved["model_config"]))
    except (KeyError, TypeError) as e:
        raise ArtifactError(f"run config {run_dir / RUN_CONFIG} has no valid model_config ({e})") from None
    tensors, _ = load_tensors(run_dir / WEIGHTS)
    model = NFResNet(cfg)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()
        detail = "; ".join(s.strip() for s in first[1:3]) if len(first) > 1 else first[0]
        raise ArtifactError(f"weights in {run_dir / WEIGHTS} do not match the config: {detail[:300]}") from None
    return model.eval(), resolved


__all__ = ["RUN_CONFIG", "CURVES", "METRICS", "SUMMARY", "WEIGHTS", "load_run_model"]
