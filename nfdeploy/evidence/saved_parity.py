"""Parity with saved outputs: the one place the suite and the CPU half call parity_report, and the digest of
its report that goes into a phase's summary.

`parity_report(..., save_outputs=True)` writes outputs.npz + provenance.json (nfdeploy.check.saved_outputs),
which `nfdeploy compare CPU_DIR GPU_DIR` reads; the inputs' sha256 is also recorded in the suite's summary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nfdeploy.artifacts import array_sha256
from nfdeploy.check.backends import load_export_source
from nfdeploy.check.parity import ParityOptions, load_parity_data, parity_report
from nfdeploy.render import markdown_table
from nfdeploy.runtime.base import Backend


def parity_with_outputs(
    export_dir: Path,
    out_dir: Path,
    *,
    only: Sequence[str] | None,
    backends: Sequence[Backend] | None = None,
    max_samples: int = 512,
    invariance_samples: int = 64,
    batch_matrix: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """parity_report with saved outputs, plus the inputs' digest and shape (inputs_sha256, inputs_shape)."""
    options = ParityOptions(
        only=only or (),
        max_samples=max_samples,
        invariance_samples=invariance_samples,
        batch_matrix=batch_matrix,
        save_outputs=True,
    )
    rep = parity_report(export_dir, out_dir, options, backends=backends, log=log).to_dict()
    # The inputs' digest: the cross-machine comparison is valid only when both sides ran the same inputs.
    x = load_parity_data(load_export_source(export_dir), None, None, max_samples).x
    rep["inputs_sha256"] = array_sha256(x)
    rep["inputs_shape"] = list(x.shape)
    return rep


def parity_digest(rep: dict[str, Any]) -> dict[str, Any]:
    """What a phase's summary keeps of a parity report: verdict, data, inputs' digest, one row per backend
    (no number for a backend that did not run), the batch-invariance matrix, and a Markdown table."""
    rows = [
        {
            k: r.get(k)
            for k in ("name", "status", "rel_l2", "max_abs", "top1_agreement", "accuracy", "reason")
            if r.get(k) is not None
        }
        for r in rep.get("backends", [])
    ]
    inv = rep.get("batch_matrix", {}).get("backends", {})
    return {
        "ok": rep.get("ok"),
        "failed": rep.get("failed"),
        "data": rep.get("data"),
        "inputs_sha256": rep.get("inputs_sha256"),
        "inputs_shape": rep.get("inputs_shape"),
        "backends": rows,
        "batch_invariance": inv,
        "markdown": markdown_table(rows, ["name", "status", "rel_l2", "top1_agreement", "reason"], floatfmt="{:.3g}"),
    }


__all__ = ["parity_digest", "parity_with_outputs"]
