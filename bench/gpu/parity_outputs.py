"""Parity with saved outputs, the one place the suite and the CPU half call parity_report.

SWITCH AFTER MERGE: a parallel branch adds `parity_report(..., save_outputs=True)` (and `nfdeploy compare A B`).
`run_parity` passes save_outputs=True when parity_report accepts it. Until then it saves the outputs itself
(`outputs.npz`: the parity inputs and each backend's logits on them), for small models only
(`fallback_outputs`), by running the same backends again on the same inputs. Once the branch is merged
this fallback is dead code: delete `_save_outputs_fallback` and the `else` branch below.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

OUTPUTS_FILE = "outputs.npz"


def parity_accepts_save_outputs() -> bool:
    from nfdeploy.parity import parity_report

    return "save_outputs" in inspect.signature(parity_report).parameters


def run_parity(export_dir: Path, out_dir: Path, *, only: Sequence[str] | None, backends: Sequence[Any] | None = None,
               max_samples: int = 512, invariance_samples: int = 64, fallback_outputs: bool = True,
               log: Callable[[str], None] = print) -> dict[str, Any]:
    from nfdeploy.backends import load_export_source
    from nfdeploy.parity import load_parity_data, parity_report

    from bench.gpu.steps import sha256_array

    kw = dict(only=only, backends=backends, max_samples=max_samples, invariance_samples=invariance_samples, log=log)
    if parity_accepts_save_outputs():
        rep = parity_report(export_dir, out_dir, save_outputs=True, **kw)  # <- the call meant to stay
        rep["outputs_saved_by"] = "parity_report(save_outputs=True)"
    else:
        rep = parity_report(export_dir, out_dir, **kw)
        if fallback_outputs:
            _save_outputs_fallback(export_dir, out_dir, rep, backends, max_samples, log)
            rep["outputs_saved_by"] = f"bench/gpu/parity_outputs.py fallback ({OUTPUTS_FILE})"
        else:
            rep["outputs_saved_by"] = None
    # The inputs' digest: the cross-machine comparison is valid only when both sides ran the same inputs.
    source = load_export_source(export_dir)
    x = load_parity_data(source, None, None, max_samples)[0]
    rep["inputs_sha256"] = sha256_array(x)
    rep["inputs_shape"] = list(x.shape)
    return rep


def _save_outputs_fallback(export_dir: Path, out_dir: Path, rep: dict[str, Any], backends: Sequence[Any] | None,
                           max_samples: int, log: Callable[[str], None]) -> None:
    from nfdeploy.artifacts import atomic_path
    from nfdeploy.backends import export_backends, load_export_source
    from nfdeploy.parity import load_parity_data
    from nfdeploy.runtime.base import run_batched

    source = load_export_source(export_dir)
    x = load_parity_data(source, None, None, max_samples)[0]
    ran = {r["name"] for r in rep["backends"] if r.get("status") in ("pass", "FAIL")}
    arrays: dict[str, np.ndarray] = {"__inputs__": x}
    for b in list(backends) if backends is not None else export_backends(source):
        if b.name in ran:
            with b:
                arrays[b.name] = run_batched(b, x)
    with atomic_path(Path(out_dir) / OUTPUTS_FILE) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    log(f"  saved {len(arrays) - 1} backends' outputs to {Path(out_dir) / OUTPUTS_FILE}")


__all__ = ["OUTPUTS_FILE", "parity_accepts_save_outputs", "run_parity"]
