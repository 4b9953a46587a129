"""Parity with saved outputs: the one place the suite and the CPU half call parity_report.

`parity_report(..., save_outputs=True)` writes outputs.npz + provenance.json (nfdeploy.forensics), which
`nfdeploy compare CPU_DIR GPU_DIR` reads; the inputs' sha256 is also recorded in the suite's summary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def run_parity(
    export_dir: Path,
    out_dir: Path,
    *,
    only: Sequence[str] | None,
    backends: Sequence[Any] | None = None,
    max_samples: int = 512,
    invariance_samples: int = 64,
    log: Callable[[str], None] = print,
    **kw: Any,
) -> dict[str, Any]:
    from nfdeploy.artifacts import array_sha256
    from nfdeploy.check.backends import load_export_source
    from nfdeploy.check.parity import load_parity_data, parity_report

    rep = parity_report(
        export_dir,
        out_dir,
        only=only,
        backends=backends,
        max_samples=max_samples,
        invariance_samples=invariance_samples,
        save_outputs=True,
        log=log,
        **kw,
    )
    # The inputs' digest: the cross-machine comparison is valid only when both sides ran the same inputs.
    x = load_parity_data(load_export_source(export_dir), None, None, max_samples)[0]
    rep["inputs_sha256"] = array_sha256(x)
    rep["inputs_shape"] = list(x.shape)
    return rep


__all__ = ["run_parity"]
