"""The parity report's views: parity.json, parity.md and parity.png (with per_block.png and batch_matrix.png)
written from a ParityResult. Nothing here measures or judges: every figure comes from the result object.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from nfdeploy.artifacts import atomic_write_json, atomic_write_text
from nfdeploy.check.backends import REFERENCE
from nfdeploy.check.batch_matrix import batch_matrix_markdown, plot_batch_matrix
from nfdeploy.check.isa import isa_label
from nfdeploy.check.parity_result import PARITY_JSON, PARITY_MD, PARITY_PNG, ParityResult, ParityRow
from nfdeploy.check.per_block import per_block_markdown, plot_per_block
from nfdeploy.precision import describe_tolerances, judged_tolerance, tolerances
from nfdeploy.render import markdown_table, pyplot, save_figure
from nfdeploy.status import Status

# The columns of the table of backends that ran (accuracy columns only when accuracy applies).
RAN_COLUMNS = ["name", "device", "precision", "math_mode", "max_abs", "rel_l2", "sqnr_db", "cosine", "top1_agreement"]


def plot_parity(rows: list[ParityRow], path: Path) -> None:
    """Relative L2 error per backend that ran (green: pass, red: FAIL), its tolerance dashed."""
    plt = pyplot()
    ran = [r for r in rows if r.ran and r.name != REFERENCE]
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(ran) + 2), 4))
    vals = [max(r.rel_l2, 1e-17) if np.isfinite(r.rel_l2) else 1.0 for r in ran]
    colors = ["tab:green" if r.status is Status.PASS else "tab:red" for r in ran]
    ax.bar(range(len(ran)), vals, color=colors)
    for i, r in enumerate(ran):
        if "rel_l2" in r.tolerance:  # int8 is judged by agreement and accuracy, not by rel L2
            ax.hlines(r.tolerance["rel_l2"], i - 0.4, i + 0.4, colors="black", linestyles="--")
    ax.set_xticks(range(len(ran)), [r.name for r in ran], rotation=40, ha="right", fontsize=8)
    ax.set_yscale("log"), ax.set_ylabel("relative L2 error vs float64 reference"), ax.grid(alpha=0.3, axis="y")
    ax.set_title("parity per backend (dashed: tolerance)")
    save_figure(fig, path)


def tolerance_notes(result: ParityResult) -> list[str]:
    """The lines that say how the judged tolerances depart from the table: rel L2 raised to the reference
    framework's own error, top-1 agreement lowered to the framework's own agreement."""
    table = tolerances()
    notes = []
    fw = {p: e for p, e in result.framework_errors.items() if e is not None}
    if fw:
        notes.append(
            "Judged tolerance: rel L2 ≤ max(floor, 2 × the reference framework's own error in that dtype) — "
            + "; ".join(
                f"{p}: floor {table[p]['rel_l2']:g}, torch CPU unfolded {p} error {e:.3g} → "
                f"{judged_tolerance(p, e)['rel_l2']:.3g}"
                + ("" if math.isfinite(e) else f" ({judged_tolerance(p, e)['rule']})")
                for p, e in fw.items()
            )
            + "\n"
        )
    lowered = {p: a for p, a in result.framework_top1.items() if a < table[p].get("top1_agreement", 0)}
    if lowered:
        notes.append(
            "Top-1 agreement judged no stricter than the reference framework itself meets in that dtype: "
            + "; ".join(
                f"{p}: table {table[p]['top1_agreement']:.1%}, torch CPU unfolded {p} {a:.2%}"
                for p, a in lowered.items()
            )
            + ".\n"
        )
    return notes


def parity_markdown(result: ParityResult) -> str:
    """parity.md: the data and the reference, the tolerances, the verdict, then a table per kind of outcome,
    the batch-invariance matrix, the pairs, and the per-block section when the run has one."""
    ran = [r.to_dict() for r in result.backends if r.ran]
    broken = [r for r in result.backends if r.status in (Status.BROKEN, Status.CRASHED)]
    skipped = [r for r in result.backends if r.status is Status.SKIPPED]
    cols = RAN_COLUMNS + (["accuracy", "accuracy_delta"] if any("accuracy" in r for r in ran) else []) + ["status"]
    isa = result.isa or {}
    verdict = "All backends that ran are within tolerance" if result.ok else f"FAILED — {result.failure}"
    md = [
        f"# Parity: {result.model}\n",
        f"Data: {result.data}. Accuracy: {result.accuracy}. "
        f"Reference: {result.reference} (the unfolded model in float64 on CPU). "
        f"Tolerances — {describe_tolerances()}; a non-finite output fails.\n",
        f"Instruction set: {isa_label(result.isa)}; torch CPU capability "
        f"{isa.get('torch_cpu_capability', '?')}. {isa.get('onnxruntime', '')}\n",
        *tolerance_notes(result),
        f"**{verdict}**\n",
        "## Backends\n",
        markdown_table(ran, cols, floatfmt="{:.3g}"),
    ]
    if broken:
        md += [
            "\n## Failed to load or to run\n",
            markdown_table([{"name": r.name, "status": r.status.value, "reason": r.reason} for r in broken]),
        ]
    md += [
        "\n## Skipped\n",
        markdown_table([{"name": r.name, "reason": r.reason} for r in skipped]) if skipped else "(none)\n",
        batch_matrix_markdown(result.batch_matrix),
        "\n## Pairwise (cross-runtime / cross-device)\n",
        markdown_table([p.to_dict() for p in result.pairwise], floatfmt="{:.3g}")
        if result.pairwise
        else "(fewer than two backends ran)\n",
    ]
    if result.per_block is not None:
        md += ["\n## Error per block\n", per_block_markdown(result.per_block)]
    if result.per_block_error is not None:
        md += ["\n## Error per block\n", f"Per-block forensics failed: {result.per_block_error}\n"]
    return "\n".join(md)


def write_parity_report(result: ParityResult, out_dir: Path) -> None:
    """parity.json, parity.md and parity.png in `out_dir`; per_block.png and batch_matrix.png when the run has
    them."""
    atomic_write_json(out_dir / PARITY_JSON, result.to_dict())
    if result.per_block is not None:
        plot_per_block(result.per_block, out_dir / "per_block.png", f"{result.model}: error per block")
    if result.batch_matrix.backends:
        plot_batch_matrix(
            result.batch_matrix.backends, out_dir / "batch_matrix.png", f"{result.model}: batch invariance"
        )
    atomic_write_text(out_dir / PARITY_MD, parity_markdown(result))
    plot_parity(result.backends, out_dir / PARITY_PNG)


__all__ = ["RAN_COLUMNS", "parity_markdown", "plot_parity", "tolerance_notes", "write_parity_report"]
