"""Resumable checkpoints in one safetensors file: model, EMA and optimizer tensors plus a JSON
metadata entry for everything else (position in the run, partial-epoch counters, history)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from nfdeploy.artifacts import ArtifactError, load_tensors, save_tensors

CHECKPOINT = "checkpoint.safetensors"


def save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: dict[str, torch.Tensor] | None,
    state: dict[str, Any],
) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ema.items()})
    opt = optimizer.state_dict()
    for pid, pstate in opt["state"].items():
        for k, v in pstate.items():
            if isinstance(v, torch.Tensor):
                tensors[f"opt.{pid}.{k}"] = v
    meta = {"state": json.dumps(state), "param_groups": json.dumps(opt["param_groups"])}
    save_tensors(path, tensors, meta)


def load_checkpoint(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, ema: dict[str, torch.Tensor] | None
) -> dict[str, Any]:
    tensors, meta = load_tensors(path)
    try:
        state = json.loads(meta["state"])
        groups = json.loads(meta["param_groups"])
    except (KeyError, json.JSONDecodeError):
        raise ArtifactError(f"checkpoint {path} has no readable resume state") from None
    model_sd = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(model_sd, strict=True)
    except RuntimeError as e:
        raise ArtifactError(f"checkpoint {path} does not match the model: {str(e).splitlines()[0]}") from None
    if ema is not None:
        for k in ema:
            if f"ema.{k}" not in tensors:
                raise ArtifactError(f"checkpoint {path} lacks EMA tensor {k}")
            ema[k].copy_(tensors[f"ema.{k}"])
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            opt_state.setdefault(int(pid), {})[name] = v
    optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
    return state
