"""What a parity run is asked to do: ParityOptions, one value the CLI, the workflow and the ISA child share.

Floor 1 (imports only nfdeploy.errors): nfdeploy.check.isa, which the runtimes may use, builds the child
process's command line from the same object.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from nfdeploy.errors import UserError


class ParityError(UserError, RuntimeError):
    """Bad parity input (options out of range, data that does not fit the model); one line."""


@dataclass(frozen=True)
class ParityOptions:
    """dataset / data_path: the data (default: the run's own test split); only: --only patterns (empty: every
    backend); max_samples: test images checked; invariance_samples: of those, the ones the batch-invariance matrix
    runs; per_block / per_block_samples: error at every block on that many images; batch_matrix: batch sizes 2..64
    instead of parity's default columns; save_outputs: outputs.npz + provenance.json for `nfdeploy compare`;
    threads: torch CPU threads and ONNX Runtime / OpenVINO CPU threads (None: each runtime's default)."""

    dataset: str | None = None
    data_path: str | None = None
    only: Sequence[str] = ()
    max_samples: int = 512
    invariance_samples: int = 64
    per_block: bool = False
    per_block_samples: int = 64
    batch_matrix: bool = False
    save_outputs: bool = False
    threads: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "only", tuple(self.only or ()))
        for name in ("max_samples", "invariance_samples", "per_block_samples"):
            if getattr(self, name) < 1:
                raise ParityError(f"{name} must be positive, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise ParityError(f"threads must be positive, got {self.threads}")


__all__ = ["ParityError", "ParityOptions"]
