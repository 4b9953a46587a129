"""Saved parity outputs (outputs.npz + provenance.json) and their comparison across machines.

outputs.npz holds every backend's logits as it produced them (the float64 reference in float64), the
inputs and the labels; provenance.json names the model (weights, ONNX and engine sha256), the inputs'
sha256, the machine and each backend, and the sha256 of every saved output. `compare_saved_runs(A, B)`
compares two such runs of one model on the same inputs, backend by backend and across backends:
share of samples bitwise identical, max ULP, rel L2, top-1 agreement.
"""

from __future__ import annotations

import io
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np

from nfdeploy.artifacts import (
    Manifest,
    array_sha256,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    read_json,
)
from nfdeploy.check.isa import isa_label
from nfdeploy.errors import UserError, one_line
from nfdeploy.metrics import compare_outputs, top1_agreement, ulp_error
from nfdeploy.precision import get_precision
from nfdeploy.render import markdown_table

OUTPUTS_FILE = "outputs.npz"
PROVENANCE_FILE = "provenance.json"
PROVENANCE_FORMAT = "nfdeploy-parity-outputs-v1"
PROVENANCE_KEYS = (
    "format",
    "model",
    "weights_sha256",
    "inputs_sha256",
    "inputs_shape",
    "machine",
    "backends",
    "outputs_sha256",
)


class SavedRunError(UserError, RuntimeError):
    """Saved parity outputs that cannot be read, or two saved runs that cannot be compared; one line."""


def save_outputs(
    out_dir: Path,
    manifest: Manifest,
    x: np.ndarray,
    labels: np.ndarray | None,
    outputs: dict[str, np.ndarray],
    backends: dict[str, dict[str, Any]],
    threads: int | None,
    isa: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """outputs.npz (every backend's logits keyed by backend name, in the dtype given: never rounded, so a
    float64 reference stays float64; the inputs; the labels) + provenance.json (with each output's dtype
    and `isa`: the instruction-set caps the run was under, nfdeploy.check.isa.isa_record)."""
    from nfdeploy.machine import machine_info

    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        **{f"out:{k}": v for k, v in outputs.items()},
        inputs=x,
        **({"labels": labels} if labels is not None else {}),
    )
    atomic_write_bytes(out_dir / OUTPUTS_FILE, buf.getvalue())
    prov = {
        "format": PROVENANCE_FORMAT,
        **manifest.identity(),
        "inputs_sha256": array_sha256(x),
        "inputs_shape": list(x.shape),
        "labels_sha256": array_sha256(labels) if labels is not None else None,
        "threads_requested": threads,
        "isa": isa,
        "machine": machine_info(),
        "backends": backends,
        "outputs_sha256": {k: array_sha256(v) for k, v in outputs.items()},
        "outputs_dtype": {k: str(np.asarray(v).dtype) for k, v in outputs.items()},
    }
    atomic_write_json(out_dir / PROVENANCE_FILE, prov)
    return prov


def read_provenance(path: Path) -> dict[str, Any]:
    """provenance.json of a saved run, checked: a JSON object of this format with every key compare reads."""
    prov = read_json(path / PROVENANCE_FILE, "parity provenance")
    if not isinstance(prov, dict):
        raise SavedRunError(f"{path / PROVENANCE_FILE}: not a JSON object")
    if prov.get("format") != PROVENANCE_FORMAT:
        raise SavedRunError(f"{path / PROVENANCE_FILE}: format {prov.get('format')!r}, expected {PROVENANCE_FORMAT!r}")
    missing = [k for k in PROVENANCE_KEYS if k not in prov]
    if missing:
        raise SavedRunError(
            f"{path / PROVENANCE_FILE} lacks {', '.join(missing)}: not written by `nfdeploy parity "
            "--save-outputs`, or edited"
        )
    wrong = [k for k in ("machine", "backends", "outputs_sha256") if not isinstance(prov[k], dict)]
    if wrong:
        raise SavedRunError(f"{path / PROVENANCE_FILE}: {', '.join(wrong)} should be JSON object(s)")
    return prov


def read_outputs(path: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """({backend: logits}, inputs) of outputs.npz; a truncated or damaged file is a SavedRunError."""
    try:
        with np.load(path / OUTPUTS_FILE) as z:
            return {k[4:]: z[k] for k in z.files if k.startswith("out:")}, z["inputs"]
    except Exception as e:  # noqa: BLE001 - zipfile, zlib, numpy format and key errors: one unreadable file
        raise SavedRunError(
            f"{path / OUTPUTS_FILE} is unreadable (truncated or damaged?): {one_line(e, 160)}"
        ) from None


def load_saved_run(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(provenance, {backend: logits}) of a saved run, every array checked against its recorded sha256."""
    path = Path(path)
    if not (path / PROVENANCE_FILE).is_file() or not (path / OUTPUTS_FILE).is_file():
        raise SavedRunError(
            f"{path} holds no saved parity outputs ({PROVENANCE_FILE} + {OUTPUTS_FILE}): "
            "run `nfdeploy parity ... --save-outputs` first"
        )
    prov = read_provenance(path)
    outs, inputs = read_outputs(path)
    if array_sha256(inputs) != prov["inputs_sha256"]:
        raise SavedRunError(f"{path / OUTPUTS_FILE}: the inputs do not match {PROVENANCE_FILE} (sha256 differs)")
    if set(outs) != set(prov["outputs_sha256"]):
        raise SavedRunError(
            f"{path / OUTPUTS_FILE} holds outputs of {sorted(outs)}, {PROVENANCE_FILE} records "
            f"{sorted(prov['outputs_sha256'])}"
        )
    for k, v in outs.items():
        if prov["outputs_sha256"][k] != array_sha256(v):
            raise SavedRunError(
                f"{path / OUTPUTS_FILE}: outputs of {k} do not match {PROVENANCE_FILE} (sha256 differs)"
            )
    return prov, outs


def refusal_reason(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """Why two saved runs cannot be compared (different models or inputs), or None."""
    if a["model"] != b["model"]:
        return f"different models: {a['model']} vs {b['model']}"
    if a["weights_sha256"] != b["weights_sha256"]:
        return "different models: the weights' sha256 differ"
    onnx_a, onnx_b = a.get("onnx_sha256") or {}, b.get("onnx_sha256") or {}
    for p in sorted(set(onnx_a) & set(onnx_b)):
        if onnx_a[p] != onnx_b[p]:
            return f"different models: the {p} ONNX files' sha256 differ (two exports, not one)"
    if a["inputs_sha256"] != b["inputs_sha256"]:
        return f"different inputs: sha256 {str(a['inputs_sha256'])[:12]} vs {str(b['inputs_sha256'])[:12]}"
    return None


def output_pair(a: np.ndarray, b: np.ndarray, precision: str) -> dict[str, Any]:
    """A vs B in float64 (a float64 reference is compared as such): share of samples bitwise identical,
    max ULP of `precision` at A's values, rel L2, top-1 agreement."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    ulps = ulp_error(b64, a64, get_precision(precision).torch_dtype)
    return {
        "bitwise_share": float(np.all(a == b, axis=1).mean()),
        "max_ulp": float(ulps.max()),
        "rel_l2": compare_outputs(a64, b64)["rel_l2"],
        "top1_agreement": top1_agreement(a64, b64),
    }


def machine_summary(prov: dict[str, Any]) -> dict[str, Any]:
    m = prov["machine"]
    return {
        "platform": m.get("platform"),
        "cpu": (m.get("cpu") or {}).get("model"),
        "gpu": (m.get("gpu") or {}).get("name"),
        "torch_threads": m.get("torch_threads"),
        "threads_requested": prov.get("threads_requested"),
        "isa": isa_label(prov.get("isa")),
        "torch_cpu_capability": (prov.get("isa") or {}).get("torch_cpu_capability"),
        "versions": {k: v for k, v in (m.get("versions") or {}).items() if k != "onnxruntime_providers"},
    }


def compare_markdown(report: dict[str, Any]) -> str:
    same, cross = report["same_backend"], report["cross_backend"]
    md = [
        f"# Compare saved parity runs: {report['model']}\n",
        f"A: `{report['a']}` — {json.dumps(report['machine_a'])}\n",
        f"B: `{report['b']}` — {json.dumps(report['machine_b'])}\n",
        f"Instruction set: A {report['machine_a']['isa']}; B {report['machine_b']['isa']}. "
        "ONNX Runtime (MLAS) has no instruction-set switch: its rows ran each CPU's own.\n",
        f"Inputs sha256 {report['inputs_sha256'][:16]}… (same in both).\n",
        "## Same backend, A vs B\n",
        markdown_table(same, floatfmt="{:.3g}") if same else "(no backend in both)\n",
        "\n## Across backends (A row vs B column)\n",
        markdown_table(cross, floatfmt="{:.3g}") if cross else "(none)\n",
    ]
    if report["only_in_a"] or report["only_in_b"]:
        md.append(
            f"\nOnly in A: {', '.join(report['only_in_a']) or '-'}; "
            f"only in B: {', '.join(report['only_in_b']) or '-'}\n"
        )
    return "\n".join(md)


def compare_saved_runs(a: str | Path, b: str | Path, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Compare two saved parity runs backend by backend (same name in both) and across backends (every
    backend of A with every backend of B); writes compare.json / compare.md to `out_dir` when given.
    Refuses unreadable runs and runs of different models or inputs (SavedRunError)."""
    pa, oa = load_saved_run(a)
    pb, ob = load_saved_run(b)
    why = refusal_reason(pa, pb)
    if why:
        raise SavedRunError(f"cannot compare {a} with {b}: {why}")
    prec = {k: (v or {}).get("precision") or "fp32" for k, v in {**pb["backends"], **pa["backends"]}.items()}
    same = [{"backend": k, **output_pair(oa[k], ob[k], prec.get(k, "fp32"))} for k in oa if k in ob]
    cross = [
        {"a": ka, "b": kb, **output_pair(oa[ka], ob[kb], prec.get(kb, "fp32"))}
        for ka, kb in itertools.product(oa, ob)
        if ka != kb
    ]
    report = {
        "a": str(a),
        "b": str(b),
        "model": pa["model"],
        "inputs_sha256": pa["inputs_sha256"],
        "machine_a": machine_summary(pa),
        "machine_b": machine_summary(pb),
        "same_backend": same,
        "cross_backend": cross,
        "only_in_a": sorted(set(oa) - set(ob)),
        "only_in_b": sorted(set(ob) - set(oa)),
    }
    if out_dir is not None:
        atomic_write_json(Path(out_dir) / "compare.json", report)
        atomic_write_text(Path(out_dir) / "compare.md", compare_markdown(report))
    return report


__all__ = [
    "OUTPUTS_FILE",
    "PROVENANCE_FILE",
    "PROVENANCE_FORMAT",
    "PROVENANCE_KEYS",
    "SavedRunError",
    "compare_markdown",
    "compare_saved_runs",
    "load_saved_run",
    "machine_summary",
    "output_pair",
    "read_outputs",
    "read_provenance",
    "refusal_reason",
    "save_outputs",
]
