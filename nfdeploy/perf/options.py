"""What a bench is asked to do: BenchOptions (batch sizes, backend selection, timing settings, threads), checked
once when made, and the batch-list parsing the CLI and the pipeline share."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from nfdeploy.errors import UserError


class BenchError(UserError, ValueError):
    """Bad bench settings; one line."""


def parse_batches(text: str | Sequence[int]) -> tuple[int, ...]:
    """ "1,8,32" (or a sequence) -> (1, 8, 32): positive integers, or a one-line BenchError."""
    items = [t for t in str(text).split(",") if t.strip()] if isinstance(text, str) else list(text)
    try:
        out = tuple(int(t) for t in items)
    except (TypeError, ValueError):
        raise BenchError(f"batch sizes must be a comma list of integers, got {text!r}") from None
    if not out or min(out) < 1:
        raise BenchError(f"batch sizes must be positive integers, got {text!r}")
    return out


def _sorted_batches(value: str | Sequence[int]) -> tuple[int, ...]:
    """A batch list as sorted distinct sizes (a string is parsed by parse_batches first)."""
    if isinstance(value, str):
        value = parse_batches(value)
    out = tuple(sorted({int(b) for b in value}))
    if not out or min(out) < 1:
        raise BenchError(f"batch sizes must be >= 1, got {list(out)}")
    return out


@dataclass(frozen=True)
class BenchOptions:
    """The settings of `bench_report` and `bench_against`.

    `batches`: batch sizes (sorted, distinct; a "1,8,32" string is parsed); `cpu_batches`: those of CPU
    backends (None: `batches`). `only`: backend-name patterns (runtime.base.name_matches: whole name parts or
    a glob; the float64 reference is timed only when one selects it); they also select comparison groups
    ("torch-cpu-fp32", "onnxruntime-cpu-fp32", "torch-cuda-fp32", "onnxruntime-cuda-fp32"). `min_time`: timed
    seconds per backend and batch at least; `warmup`: warm-up seconds; `min_iters`: timed calls at least;
    `max_time`: the cap per cell and member after which an unsettled figure is noisy (None: 5 x min_time).
    `compile`: the torch.compile backends; `tensorrt`: the engines; `compare`: the unfolded/folded/twin groups.
    `budget_s`: wall time of the whole bench: warm-up, min_time and the cap shrink to fit, and cells that
    would start after it are listed as over budget. `threads`: CPU threads of torch (for the call) and of
    ONNX Runtime sessions (None: as set)."""

    batches: tuple[int, ...] | str = (1, 8, 32)
    cpu_batches: tuple[int, ...] | str | None = None
    only: tuple[str, ...] | None = None
    min_time: float = 2.0
    warmup: float = 1.0
    min_iters: int = 10
    max_time: float | None = None
    compile: bool = True
    tensorrt: bool = True
    compare: bool = True
    budget_s: float | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalised once, here
        set_(self, "batches", _sorted_batches(self.batches))
        if self.cpu_batches:
            set_(self, "cpu_batches", _sorted_batches(self.cpu_batches))
        else:
            set_(self, "cpu_batches", None)
        set_(self, "only", tuple(self.only) if self.only else None)
        if self.min_time < 0 or self.warmup < 0 or (self.max_time is not None and self.max_time <= 0):
            raise BenchError("min_time and warmup must be >= 0, max_time > 0")
        if self.min_iters < 1:
            raise BenchError(f"min_iters must be >= 1, got {self.min_iters}")
        if self.budget_s is not None and self.budget_s <= 0:
            raise BenchError(f"budget_s must be > 0, got {self.budget_s}")
        if self.threads is not None and self.threads < 1:
            raise BenchError(f"threads must be >= 1, got {self.threads}")

    def batches_for(self, device: str) -> list[int]:
        """The batch sizes of a backend on `device`."""
        return list(self.cpu_batches or self.batches) if device == "cpu" else list(self.batches)


# bench_against's defaults: two exports' backends are active together, so fewer batch sizes and no
# torch.compile graphs.
AGAINST_OPTIONS = BenchOptions(batches=(1, 8), compile=False)


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op CPU threads set to `n` for the block (None: unchanged), restored after."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


__all__ = ["AGAINST_OPTIONS", "BenchError", "BenchOptions", "parse_batches", "torch_threads"]
