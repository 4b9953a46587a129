"""Plots and Markdown rendering for run and benchmark reports (matplotlib, Agg, atomic writes)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nfdeploy.artifacts import atomic_path


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path) -> None:
    plt = pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_training_curves(history: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> None:
    """Loss (train/test) and accuracy (train/test) per epoch."""
    plt = pyplot()
    ep = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot(ep, [h["train_loss"] for h in history], label="train")
    ax1.plot(ep, [h["test_loss"] for h in history], label="test")
    ax1.set_xlabel("epoch"), ax1.set_ylabel("loss"), ax1.legend(), ax1.grid(alpha=0.3)
    ax2.plot(ep, [100 * h["train_accuracy"] for h in history], label="train")
    ax2.plot(ep, [100 * h["test_accuracy"] for h in history], label="test")
    ax2.set_xlabel("epoch"), ax2.set_ylabel("accuracy (%)"), ax2.legend(), ax2.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    save_figure(fig, path)


def markdown_table(
    rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, floatfmt: str = "{:.4g}"
) -> str:
    if not rows:
        return "(no rows)\n"
    columns = list(columns or rows[0].keys())

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return floatfmt.format(v)
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_bench_result(
    out_dir: str | Path, stem: str, meta: dict[str, Any], rows: Sequence[dict[str, Any]], markdown: str
) -> None:
    """bench/results/STEM.json ({"meta", "rows"}) and STEM.md, atomically; prints the Markdown."""
    from nfdeploy.artifacts import atomic_write_json, atomic_write_text

    atomic_write_json(Path(out_dir) / f"{stem}.json", {"meta": meta, "rows": list(rows)})
    atomic_write_text(Path(out_dir) / f"{stem}.md", markdown)
    print(markdown)
