"""Parity: every backend against the float64 unfolded PyTorch model, on real labelled data.

Per backend: max |error|, relative L2 error, cosine similarity, top-1 agreement, accuracy and its
delta, judged by the precision table (nfdeploy/precision.py). Batch invariance: the one protocol of
nfdeploy.check.batch_matrix (each sample inside full batches of several sizes vs its own batch-1 output; an NF
net has no batch statistics, the BatchNorm twin in training mode is the contrast), with a small column set
by default and batch sizes 2..64 under --batch-matrix. Cross-backend: every pair of backends that ran.
One backend is active at a time.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nfdeploy.artifacts import atomic_write_json, atomic_write_text, read_json
from nfdeploy.check.backends import (
    REFERENCE,
    ExportSource,
    default_report_dir,
    export_backends,
    load_export_source,
    select_backends,
)
from nfdeploy.check.batch_matrix import (
    DEFAULT_BATCHES,
    MATRIX_BATCHES,
    batch_invariance_matrix,
    bn_twin_matrix,
    matrix_rows,
    plot_batch_matrix,
)
from nfdeploy.check.isa import isa_label, isa_record
from nfdeploy.errors import UserError, one_line
from nfdeploy.metrics import compare_outputs, framework_errors, judge, top1_agreement
from nfdeploy.precision import describe_tolerance, describe_tolerances, get_precision, judged_tolerance, tolerances
from nfdeploy.render import markdown_table, pyplot, save_figure
from nfdeploy.runtime.base import Backend, BackendBroken, BackendUnavailable, run_batched


class ParityError(UserError, RuntimeError):
    """Bad parity input (data that does not fit the model); one line."""


def load_parity_data(
    source: ExportSource, dataset: str | None = None, path: str | None = None, max_samples: int = 512
) -> tuple[np.ndarray, np.ndarray | None, str, str | None]:
    """Normalised test images, their labels (None when they are not the model's classes), a description,
    and the reason accuracy is not applicable (or None)."""
    from nfdeploy.config import DataSection, recipe_from_resolved

    if source.resolved is None and dataset is None:
        raise ParityError("this export has no training run to take data from; pass --dataset (and --data-path)")
    c, h, _ = source.input_shape
    d = (
        recipe_from_resolved(source.resolved["recipe"]).data
        if source.resolved is not None
        else DataSection(input_size=h, in_chans=c)
    )
    if dataset is not None:
        d = replace(d, dataset=dataset, path=path or "")
    data = d.load(input_size=h)
    if data.in_chans != c:
        raise ParityError(f"dataset {data.name} has {data.in_chans} channels, the model expects {c}")
    n = min(max_samples, len(data.test))
    x, y = data.batch(data.test, torch.arange(n))
    desc = f"{data.name} test split ({n} images)"
    own_names = source.manifest.input.class_names
    trained_on = source.manifest.input.dataset
    same_classes = (
        (list(data.class_names) == list(own_names))
        if own_names and getattr(data, "class_names", None)
        else data.name == trained_on
    )
    if not same_classes:
        return (
            x.numpy(),
            None,
            desc,
            (
                f"the labels of {data.name} are not the model's classes (trained on "
                f"{trained_on or 'unknown data'}): accuracy is not applicable"
            ),
        )
    return x.numpy(), y.numpy(), desc, None


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    ran = [r for r in rows if r.get("status") in ("pass", "FAIL") and r["name"] != REFERENCE]
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(ran) + 2), 4))
    vals = [max(r["rel_l2"], 1e-17) if np.isfinite(r["rel_l2"]) else 1.0 for r in ran]
    colors = ["tab:green" if r["status"] == "pass" else "tab:red" for r in ran]
    ax.bar(range(len(ran)), vals, color=colors)
    for i, r in enumerate(ran):
        if "rel_l2" in r["tolerance"]:  # int8 is judged by agreement and accuracy, not by rel L2
            ax.hlines(r["tolerance"]["rel_l2"], i - 0.4, i + 0.4, colors="black", linestyles="--")
    ax.set_xticks(range(len(ran)), [r["name"] for r in ran], rotation=40, ha="right", fontsize=8)
    ax.set_yscale("log"), ax.set_ylabel("relative L2 error vs float64 reference"), ax.grid(alpha=0.3, axis="y")
    ax.set_title("parity per backend (dashed: tolerance)")
    save_figure(fig, path)


# The report's files, in the report dir (default_report_dir beside the export): parity writes them, bench and
# serve read.
PARITY_JSON, PARITY_MD, PARITY_PNG = "parity.json", "parity.md", "parity.png"
# Row statuses that fail a parity run, and the words the failure line uses for each.
FAILURE_KINDS = {"FAIL": "outside tolerance", "broken": "failed to load", "crashed": "crashed while running"}


class NothingCheckedError(ParityError):
    """No backend under test produced an output (all unavailable here): an error, never a pass."""


def failure_summary(rows: Sequence[dict[str, Any]]) -> str:
    """'outside tolerance: a, b; failed to load: c' — every failed backend under the kind of its failure."""
    by_kind = {kind: [r["name"] for r in rows if r.get("status") == status] for status, kind in FAILURE_KINDS.items()}
    return "; ".join(f"{kind}: {', '.join(names)}" for kind, names in by_kind.items() if names)


def _nothing_checked(chosen: Sequence[Backend], rows: Sequence[dict[str, Any]]) -> NothingCheckedError:
    by_reason: dict[str, list[str]] = {}
    for r in rows:
        if r.get("status") == "skipped":
            by_reason.setdefault(r["reason"], []).append(r["name"])
    why = "; ".join(f"{', '.join(names)}: {reason}" for reason, names in by_reason.items())
    return NothingCheckedError(
        f"nothing was checked: none of the {len(chosen)} selected backend(s) could run here "
        f"({why or 'no backend selected'})"
    )


def _invariance(b: Backend, xi: np.ndarray, batches: Sequence[int]) -> dict[str, Any]:
    """The batch-invariance matrix of one active backend, run only at batch sizes its profiles cover."""
    profiles = b.batch_profiles
    if profiles is not None and not b.supports_batch(1):  # batch 1 is every column's baseline
        return {str(bs): {"skipped": f"batch 1 is outside the engine profiles {list(profiles)}"} for bs in batches}
    return batch_invariance_matrix(
        b.run,
        xi,
        get_precision(b.precision).torch_dtype,
        batches,
        max_batch=max(hi for _, hi in profiles) if profiles else None,
    )


def _check_backend(
    b: Backend,
    x: np.ndarray,
    xi: np.ndarray,
    y: np.ndarray | None,
    ref: np.ndarray,
    framework: dict[str, float | None],
    framework_top1: dict[str, float],
    batches: Sequence[int],
    log: Callable[[str], None],
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """One backend, active only inside this call: its parity row and, when it ran, its outputs and its batch-
    invariance matrix. skipped = cannot run here; broken = the artifact failed to load; crashed = it loaded,
    then failed to run."""
    reason = b.unavailable_reason()
    if reason:
        log(f"  {b.name}: skipped ({reason})")
        return {**b.spec.describe(), "status": "skipped", "reason": reason}, None
    try:
        b.activate()
    except BackendUnavailable as e:
        log(f"  {b.name}: skipped ({e})")
        return {**b.spec.describe(), "status": "skipped", "reason": str(e)}, None
    except Exception as e:  # noqa: BLE001 - BackendBroken, or anything else a loader raises: a failure, reported
        why = one_line(e, 240, with_type=not isinstance(e, BackendBroken))
        log(f"  {b.name}: FAILED to load ({why})")
        return {**b.spec.describe(), "status": "broken", "reason": f"failed to load: {why}"}, None
    try:
        out = run_batched(b, x)
        found = {"out": out, "invariance": _invariance(b, xi, batches)}
        described = b.describe()
    except Exception as e:  # noqa: BLE001 - a runtime failing at run time is a finding, not a crash of the report
        log(f"  {b.name}: CRASHED while running ({one_line(e, 240)})")
        return {**b.spec.describe(), "status": "crashed", "reason": f"crashed while running: {one_line(e, 240)}"}, None
    finally:
        b.deactivate()
    tol = judged_tolerance(b.precision, framework.get(b.precision), framework_top1.get(b.precision))
    row = {**described, **judge(out, ref, b.precision, y, tol)}
    acc = f", accuracy {row['accuracy']:.2%}" if "accuracy" in row else ""
    log(
        f"  {b.name}: rel L2 {row['rel_l2']:.2e}, SQNR {row['sqnr_db'] or float('inf'):.1f} dB, top-1 agreement "
        f"{row['top1_agreement']:.2%}{acc} ({describe_tolerance(row['tolerance'])}) → {row['status']}"
        + (f" ({row['reason']})" if "reason" in row else "")
    )
    return row, found


def _pairwise(outputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    pairs = []
    for a, b in itertools.combinations(outputs, 2):
        r = compare_outputs(outputs[a], outputs[b])
        pairs.append(
            {
                "a": a,
                "b": b,
                "rel_l2": r["rel_l2"],
                "max_abs": r["max_abs"],
                "top1_agreement": top1_agreement(outputs[a], outputs[b]),
            }
        )
    return pairs


def parity_report(
    export_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    dataset: str | None = None,
    data_path: str | None = None,
    only: Sequence[str] | None = None,
    max_samples: int = 512,
    invariance_samples: int = 64,
    log: Callable[[str], None] = print,
    backends: Sequence[Backend] | None = None,
    per_block: bool = False,
    per_block_samples: int = 64,
    batch_matrix: bool = False,
    save_outputs: bool = False,
    threads: int | None = None,
) -> dict[str, Any]:
    """Run every backend on the data, one active at a time, compare with the reference, and write
    parity.json / parity.md / parity.png to out_dir (default: beside the export dir, see
    default_report_dir). `backends`: a list already made by export_backends (default: all of them).
    A backend is judged by max(the precision table's floor, 2 x the unfolded torch model's own error in
    that dtype on these inputs) (precision.judged_tolerance). A backend that cannot run here is skipped;
    one whose artifact fails to load ("broken") or that fails while running ("crashed") fails the run; a
    run in which no selected backend produced an output raises NothingCheckedError and writes nothing.
    Forensics: per_block (nfdeploy.check.per_block) (error at every block, first diverging block; written after
    the main report, so its failure loses nothing), batch_matrix (batch sizes 1..64 vs batch 1),
    save_outputs (outputs.npz + provenance.json for `nfdeploy compare`). threads: torch CPU threads and
    ONNX Runtime intra-op threads (of the backends made here; given `backends` keep their own)."""
    from nfdeploy.check.saved_outputs import OUTPUTS_FILE, PROVENANCE_FILE
    from nfdeploy.check.saved_outputs import save_outputs as write_saved_outputs

    export_dir = Path(export_dir)
    source = load_export_source(export_dir)
    if threads is not None:
        if threads < 1:
            raise ParityError(f"threads must be positive, got {threads}")
        torch.set_num_threads(threads)
    all_backends = list(backends) if backends is not None else export_backends(source, threads=threads)
    chosen = select_backends([b for b in all_backends if b.name != REFERENCE], only)
    reasons = {b.name: b.unavailable_reason() for b in chosen}  # the cheap probe, once per backend up front
    if chosen and all(reasons.values()):  # say so before the reference runs
        raise _nothing_checked(
            chosen, [{"name": b.name, "status": "skipped", "reason": reasons[b.name]} for b in chosen]
        )
    ref_backend = next(b for b in all_backends if b.name == REFERENCE)
    out_dir = Path(out_dir) if out_dir is not None else default_report_dir(export_dir)
    x, y, data_desc, accuracy_na = load_parity_data(source, dataset, data_path, max_samples)
    log(f"parity of {source.manifest.model} on {data_desc}; reference {REFERENCE}")
    if accuracy_na:
        log(f"  {accuracy_na}")
    with ref_backend:  # run_tensor, not run(): run() hands back float32, the reference stays float64
        ref = np.concatenate(
            [ref_backend.run_tensor(torch.from_numpy(x[i : i + 64])).double().numpy() for i in range(0, len(x), 64)]
        )
    rows: list[dict[str, Any]] = [{**ref_backend.describe(), **judge(ref, ref, "fp64", y)}]
    xi = x[:invariance_samples]
    # The reference framework's own error per dtype (the unfolded model in torch on CPU, same inputs).
    framework_full = {
        p: framework_errors(source.model, x, ref, p)
        for p in sorted({b.precision for b in chosen if reasons[b.name] is None})
    }
    framework = {p: None if e is None else e["rel_l2"] for p, e in framework_full.items()}
    framework_top1 = {p: e["top1_agreement"] for p, e in framework_full.items() if e}
    for p, e in framework_full.items():
        if e is not None:
            log(
                f"  reference framework (torch CPU unfolded) {p}: rel L2 {e['rel_l2']:.2e}, "
                f"top-1 agreement {e['top1_agreement']:.2%}"
            )
    batches = MATRIX_BATCHES if batch_matrix else DEFAULT_BATCHES
    outputs: dict[str, np.ndarray] = {}
    matrix: dict[str, Any] = {}
    for b in chosen:
        row, found = _check_backend(b, x, xi, y, ref, framework, framework_top1, batches, log)
        rows.append(row)
        if found is not None:
            outputs[b.name], matrix[b.name] = found["out"], found["invariance"]
    if not outputs and not any(r.get("status") in FAILURE_KINDS for r in rows):
        raise _nothing_checked(chosen, rows)
    matrix.update(bn_twin_matrix(source, xi, batches))  # the contrast: batch statistics in train mode
    failed = [r["name"] for r in rows if r.get("status") in FAILURE_KINDS]
    # The instruction-set caps this process runs under (nfdeploy.check.isa) and what torch's own dispatch chose.
    isa = {**isa_record(), "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}
    report = {
        "model": source.manifest.model,
        "export_dir": str(export_dir),
        "data": data_desc,
        "accuracy": accuracy_na or "on the labelled test split",
        "reference": REFERENCE,
        "tolerances": tolerances(),
        "backends": rows,
        "batch_matrix": {"batches": list(batches), "samples": int(len(xi)), "backends": matrix},
        "pairwise": _pairwise(outputs),
        "ok": not failed,
        "failed": failed,
        "failure": failure_summary(rows) or None,
        "framework_errors": framework,
        "framework_top1": framework_top1,
        "isa": isa,
        "out_dir": str(out_dir),
    }
    if save_outputs:
        described = {
            r["name"]: {k: r.get(k) for k in ("precision", "runtime", "device", "threads", "file", "providers")}
            for r in rows
            if r["name"] in outputs or r["name"] == REFERENCE
        }
        write_saved_outputs(out_dir, source.manifest, x, y, {REFERENCE: ref, **outputs}, described, threads, isa=isa)
        report["saved_outputs"] = [OUTPUTS_FILE, PROVENANCE_FILE]
    write_parity_report(report, out_dir)
    if per_block:  # after the main report is on disk: a failure here must not discard every backend's run
        ran = [b for b in chosen if b.name in outputs]
        tols = {r["name"]: r["tolerance"] for r in rows if "tolerance" in r}
        from nfdeploy.check.per_block import per_block_report

        try:
            report["per_block"] = per_block_report(
                source,
                x[:per_block_samples],
                ran,
                ref_backend,
                tols,
                {k: v[:per_block_samples] for k, v in outputs.items()},
                log=log,
            )
        except Exception as e:  # noqa: BLE001 - reported in the written report, and the run still says so
            report["per_block_error"] = one_line(e, 400)
            log(f"  per-block forensics failed: {report['per_block_error']}")
        write_parity_report(report, out_dir)
    return report


def read_parity_rows(export_dir: str | Path) -> dict[str, dict[str, Any]] | None:
    """The export's saved parity rows ({backend name: row}, from PARITY_JSON in its default report dir),
    or None when there is no report. A report that exists but cannot be read raises UserError: a reader
    that needs a verdict (bench's fastest backend, serve's default) must not mistake it for "no report"."""
    path = default_report_dir(export_dir) / PARITY_JSON
    if not path.is_file():
        return None
    report = read_json(path, "parity report")
    rows = report.get("backends") if isinstance(report, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "name" in r for r in rows):
        raise UserError(f"{path}: not a parity report (no list of backend rows with names)")
    return {r["name"]: r for r in rows}


def write_parity_report(report: dict[str, Any], out_dir: Path) -> None:
    atomic_write_json(out_dir / PARITY_JSON, report)
    ran = [r for r in report["backends"] if r.get("status") in ("pass", "FAIL")]
    skipped = [r for r in report["backends"] if r.get("status") == "skipped"]
    broken = [r for r in report["backends"] if r.get("status") in ("broken", "crashed")]
    cols = ["name", "device", "precision", "math_mode", "max_abs", "rel_l2", "sqnr_db", "cosine", "top1_agreement"]
    cols += ["accuracy", "accuracy_delta"] if any("accuracy" in r for r in ran) else []
    cols += ["status"]
    bm = report["batch_matrix"]
    md = [
        f"# Parity: {report['model']}\n",
        f"Data: {report['data']}. Accuracy: {report['accuracy']}. "
        f"Reference: {report['reference']} (the unfolded model in float64 on CPU). "
        f"Tolerances — {describe_tolerances()}; a non-finite output fails.\n",
        f"Instruction set: {isa_label(report.get('isa'))}; torch CPU capability "
        f"{(report.get('isa') or {}).get('torch_cpu_capability', '?')}. "
        f"{(report.get('isa') or {}).get('onnxruntime', '')}\n",
        f"**{'All backends that ran are within tolerance' if report['ok'] else 'FAILED — ' + report['failure']}**\n",
        "## Backends\n",
        markdown_table(ran, cols, floatfmt="{:.3g}"),
        *(
            [
                "\n## Failed to load or to run\n",
                markdown_table([{"name": r["name"], "status": r["status"], "reason": r["reason"]} for r in broken]),
            ]
            if broken
            else []
        ),
        "\n## Skipped\n",
        markdown_table([{"name": r["name"], "reason": r["reason"]} for r in skipped]) if skipped else "(none)\n",
        f"\n## Batch invariance ({bm['samples']} samples, "
        f"each inside full batches of {', '.join(map(str, bm['batches']))} "
        "vs its own batch-1 output; cell: share bitwise identical / max ULP / max rel L2 per sample)\n",
        markdown_table(matrix_rows(bm["backends"])) if bm["backends"] else "(no backend ran)\n",
        "\n## Pairwise (cross-runtime / cross-device)\n",
        markdown_table(report["pairwise"], floatfmt="{:.3g}")
        if report["pairwise"]
        else "(fewer than two backends ran)\n",
    ]
    fw = {p: e for p, e in report.get("framework_errors", {}).items() if e is not None}
    lowered = {
        p: a for p, a in report.get("framework_top1", {}).items() if a < tolerances()[p].get("top1_agreement", 0)
    }
    if lowered:
        md.insert(
            3,
            "Top-1 agreement judged no stricter than the reference framework itself meets in that dtype: "
            + "; ".join(
                f"{p}: table {tolerances()[p]['top1_agreement']:.1%}, torch CPU unfolded {p} {a:.2%}"
                for p, a in lowered.items()
            )
            + ".\n",
        )
    if fw:
        md.insert(
            3,
            "Judged tolerance: rel L2 ≤ max(floor, 2 × the reference framework's own error in that dtype) — "
            + "; ".join(
                f"{p}: floor {tolerances()[p]['rel_l2']:g}, torch CPU unfolded {p} error {e:.3g} → "
                f"{judged_tolerance(p, e)['rel_l2']:.3g}"
                + ("" if math.isfinite(e) else f" ({judged_tolerance(p, e)['rule']})")
                for p, e in fw.items()
            )
            + "\n",
        )
    if "per_block" in report:
        from nfdeploy.check.per_block import per_block_markdown, plot_per_block

        md += ["\n## Error per block\n", per_block_markdown(report["per_block"])]
        plot_per_block(report["per_block"], out_dir / "per_block.png", f"{report['model']}: error per block")
    if "per_block_error" in report:
        md += ["\n## Error per block\n", f"Per-block forensics failed: {report['per_block_error']}\n"]
    if bm["backends"]:
        plot_batch_matrix(bm["backends"], out_dir / "batch_matrix.png", f"{report['model']}: batch invariance")
    atomic_write_text(out_dir / PARITY_MD, "\n".join(md))
    _plot(report["backends"], out_dir / PARITY_PNG)


__all__ = [
    "FAILURE_KINDS",
    "NothingCheckedError",
    "PARITY_JSON",
    "PARITY_MD",
    "PARITY_PNG",
    "ParityError",
    "failure_summary",
    "load_parity_data",
    "parity_report",
    "read_parity_rows",
    "write_parity_report",
]
