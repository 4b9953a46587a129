"""Batch invariance: does a sample's output depend on the batch it was run in?

The one protocol (parity's default run and `--batch-matrix` alike): each sample inside full batches
of every size in a column set (samples wrap around, so no batch is a smaller leftover and a sample
sits among different neighbours and at a different position in each column) against its own output
at batch 1: share of samples bitwise identical, max ULP distance, max relative L2 per sample. An NF
net has no batch statistics; the BatchNorm twin in training mode is the contrast. Columns a backend
cannot run (above a TensorRT engine profile's max batch) are recorded as skipped, with the reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from nfdeploy.check.backends import bn_twin, twin_runner
from nfdeploy.metrics import ulp_error
from nfdeploy.render import markdown_table, pyplot, save_figure

# Every column is against batch 1, the baseline: batch 1 itself is not a column.
DEFAULT_BATCHES = (3, 16, 64)  # parity's default run: small, odd, large
MATRIX_BATCHES = (2, 3, 7, 8, 16, 32, 64)  # --batch-matrix


def profile_reason(max_batch: int) -> str:
    return f"outside the engine profile (max {max_batch})"


@dataclass
class BatchMatrix:
    """A run's batch-invariance matrix: the batch sizes (columns), how many samples, and per backend
    {str(batch size): cell} (batch_invariance_matrix's cells)."""

    batches: list[int] = field(default_factory=list)
    samples: int = 0
    backends: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"batches": list(self.batches), "samples": self.samples, "backends": self.backends}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BatchMatrix:
        return cls(list(d.get("batches", [])), int(d.get("samples", 0)), dict(d.get("backends", {})))


def batch_invariance_matrix(
    run: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    dtype: torch.dtype,
    batches: Sequence[int] = DEFAULT_BATCHES,
    max_batch: int | None = None,
) -> dict[str, dict[str, Any]]:
    """{str(batch size): cell} for every size in `batches`. A cell is {"bitwise_share", "max_ulp" (in
    `dtype` at the batch-1 value), "max_rel_l2" (per sample)} of each sample of `x` inside full batches of
    that size against its own batch-1 output, or {"skipped": reason} for a size above `max_batch` (the
    largest batch the backend runs, e.g. a TensorRT engine profile's max)."""
    n = len(x)
    alone = np.concatenate([run(x[i : i + 1]) for i in range(n)]).astype(np.float64)
    out: dict[str, dict[str, Any]] = {}
    for bs in batches:
        if max_batch is not None and bs > max_batch:
            out[str(bs)] = {"skipped": profile_reason(max_batch)}
            continue
        idx = np.arange(math.ceil(n / bs) * bs) % n
        got = np.concatenate([run(np.ascontiguousarray(x[idx[i : i + bs]])) for i in range(0, len(idx), bs)])[:n]
        got = got.astype(np.float64)
        same = np.all(got == alone, axis=1)
        rel = np.linalg.norm(got - alone, axis=1) / np.maximum(np.linalg.norm(alone, axis=1), 1e-300)
        out[str(bs)] = {
            "bitwise_share": float(same.mean()),
            "max_ulp": float(ulp_error(got, alone, dtype).max()),
            "max_rel_l2": float(rel.max()),
        }
    return out


def matrix_rows(matrix: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One Markdown row per backend: per batch size 'share bitwise / max ULP / max rel L2', or 'skipped'."""

    def cell(v: dict[str, Any]) -> str:
        if "skipped" in v:
            return f"skipped: {v['skipped']}"
        return f"{v['bitwise_share']:.0%} / {v['max_ulp']:.3g} / {v['max_rel_l2']:.2g}"

    return [{"backend": name, **{f"b{bs}": cell(v) for bs, v in per.items()}} for name, per in matrix.items()]


def batch_matrix_markdown(matrix: BatchMatrix) -> str:
    """The parity report's section: a heading that states the protocol, one row per backend (matrix_rows)."""
    return (
        f"\n## Batch invariance ({matrix.samples} samples, each inside full batches of "
        f"{', '.join(map(str, matrix.batches))} vs its own batch-1 output; cell: share bitwise identical / "
        "max ULP / max rel L2 per sample)\n\n"
        + (markdown_table(matrix_rows(matrix.backends)) if matrix.backends else "(no backend ran)\n")
    )


def plot_batch_matrix(matrix: dict[str, dict[str, dict[str, Any]]], path: Any, title: str = "") -> None:
    """Heatmap backend × batch size: colour = log10 max relative L2 vs batch 1 (white: bitwise identical),
    text = share of samples bitwise identical ("skip" on a grey cell: a column the backend cannot run)."""
    plt = pyplot()
    names = list(matrix)
    batches = list(dict.fromkeys(b for per in matrix.values() for b in per))
    cells = [[matrix[n].get(b, {"skipped": "not run"}) for b in batches] for n in names]
    vals = np.array([[c.get("max_rel_l2", np.nan) for c in row] for row in cells], dtype=float)
    logv = np.where(vals > 0, np.log10(np.maximum(vals, 1e-30)), np.nan)
    fig, ax = plt.subplots(figsize=(1.0 * len(batches) + 4, 0.5 * len(names) + 1.8))
    cmap = plt.get_cmap("viridis").with_extremes(bad="white")  # bitwise-identical cells (log of 0) show white
    finite = np.isfinite(logv).any()
    im = ax.imshow(
        np.ma.masked_invalid(logv),
        cmap=cmap,
        aspect="auto",
        vmin=np.nanmin(logv) if finite else -8,
        vmax=np.nanmax(logv) if finite else 0,
    )
    for i, row in enumerate(cells):
        for j, c in enumerate(row):
            if "skipped" in c:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, color="lightgrey"))
                ax.text(j, i, "skip", ha="center", va="center", fontsize=7, color="black")
                continue
            ax.text(
                j,
                i,
                f"{c['bitwise_share']:.0%}",
                ha="center",
                va="center",
                fontsize=7,
                color="black" if not np.isfinite(logv[i, j]) else "white",
            )
    ax.set_xticks(range(len(batches)), batches), ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("batch size")
    fig.colorbar(im, ax=ax, label="log10 max rel L2 vs batch 1 (white: bitwise identical)")
    ax.set_title(title or "batch invariance (text: share of samples bitwise identical to batch 1)", fontsize=9)
    save_figure(fig, path)


def bn_twin_matrix(source: Any, x: np.ndarray, batches: Sequence[int] = DEFAULT_BATCHES) -> dict[str, Any]:
    """The BatchNorm twin (same topology, seeded random init) in eval and train mode, float32 torch CPU:
    the contrast (batch statistics in train mode). {} for a source without a model_config (timm)."""
    twin = bn_twin(source)
    if twin is None:
        return {}
    return {
        f"bn twin torch-cpu-fp32 ({mode} mode)": batch_invariance_matrix(
            twin_runner(twin, mode), x, torch.float32, batches
        )
        for mode in ("eval", "train")
    }


__all__ = [
    "BatchMatrix",
    "DEFAULT_BATCHES",
    "MATRIX_BATCHES",
    "batch_invariance_matrix",
    "batch_matrix_markdown",
    "bn_twin_matrix",
    "matrix_rows",
    "plot_batch_matrix",
    "profile_reason",
]
