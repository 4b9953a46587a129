"""The Backend interface every runtime implements; comparison and timing code is generic over it."""

from __future__ import annotations

import abc
from typing import Any

import numpy as np


class BackendUnavailable(RuntimeError):
    """This backend cannot run here; the message is the reason (reported as 'skipped')."""


class Backend(abc.ABC):
    """run(batch) maps a float32 NCHW numpy batch to float32 logits (numpy)."""

    name: str = "backend"
    device: str = "cpu"
    precision: str = "fp32"  # fp64 | fp32 | tf32 | fp16 | bf16
    math_mode: str = "ieee"  # e.g. "ieee", "tf32", "fp16 storage+compute"

    @abc.abstractmethod
    def run(self, batch: np.ndarray) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "device": self.device, "precision": self.precision, "math_mode": self.math_mode}


def cuda_gpu() -> dict[str, Any] | None:
    """{"name", "compute_capability": "8.6"} of CUDA device 0 as torch sees it, or None."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        major, minor = torch.cuda.get_device_capability(0)
        return {"name": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}
    except Exception:  # noqa: BLE001 - a broken driver/runtime is "no usable GPU"
        return None


def run_batched(backend: Backend, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    return np.concatenate([backend.run(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
