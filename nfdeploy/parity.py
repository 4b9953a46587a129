"""Parity: every backend against the float64 unfolded PyTorch model, on real labelled data.

Per backend: max |error|, relative L2 error, cosine similarity, top-1 agreement, accuracy and its
delta, judged by the precision table (nfdeploy/precision.py). Batch invariance: each sample's output
alone vs inside batches of several sizes and shuffled batches (an NF net has no batch statistics; the
BatchNorm twin in training mode is the contrast). Cross-backend: every pair of backends that ran.
One backend is active at a time.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from nfdeploy.artifacts import atomic_write_json, atomic_write_text
from nfdeploy.backends import (REFERENCE, ExportSource, bn_twin, default_report_dir, export_backends,
                               load_export_source, select_backends, twin_runner)
from nfdeploy.errors import UserError, one_line
from nfdeploy.metrics import compare_outputs, judge, top1_agreement
from nfdeploy.precision import describe_tolerance, describe_tolerances, get_precision, judged_tolerance, tolerances
from nfdeploy.reports import markdown_table, pyplot, save_figure
from nfdeploy.runtime.base import Backend, BackendUnavailable, run_batched

INVARIANCE_BATCHES = (3, 16, 64)


class ParityError(UserError, RuntimeError):
    """Bad parity input (data that does not fit the model); one line."""


def load_parity_data(source: ExportSource, dataset: str | None = None, path: str | None = None,
                     max_samples: int = 512) -> tuple[np.ndarray, np.ndarray | None, str, str | None]:
    """Normalised test images, their labels (None when they are not the model's classes), a description,
    and the reason accuracy is not applicable (or None)."""
    from nfdeploy.config import DataSection, recipe_from_resolved

    if source.resolved is None and dataset is None:
        raise ParityError("this export has no training run to take data from; pass --dataset (and --data-path)")
    c, h, _ = source.input_shape
    d = recipe_from_resolved(source.resolved["recipe"]).data if source.resolved is not None else \
        DataSection(input_size=h, in_chans=c)
    if dataset is not None:
        d = replace(d, dataset=dataset, path=path or "")
    data = d.load(input_size=h)
    if data.in_chans != c:
        raise ParityError(f"dataset {data.name} has {data.in_chans} channels, the model expects {c}")
    n = min(max_samples, len(data.test))
    x, y = data.batch(data.test, torch.arange(n))
    desc = f"{data.name} test split ({n} images)"
    own_names = source.manifest.get("input", {}).get("class_names")
    trained_on = source.manifest.get("input", {}).get("dataset")
    same_classes = (list(data.class_names) == list(own_names)) if own_names and getattr(data, "class_names", None) \
        else data.name == trained_on
    if not same_classes:
        return x.numpy(), None, desc, (f"the labels of {data.name} are not the model's classes (trained on "
                                       f"{trained_on or 'unknown data'}): accuracy is not applicable")
    return x.numpy(), y.numpy(), desc, None


def batch_invariance(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Each sample alone vs in batches of INVARIANCE_BATCHES and in shuffled batches: max |deviation|."""
    alone = np.concatenate([run(x[i:i + 1]) for i in range(len(x))])
    devs: dict[str, float] = {}
    bitwise = True
    for bs in INVARIANCE_BATCHES:
        out = np.concatenate([run(x[i:i + bs]) for i in range(0, len(x), bs)])
        devs[f"batch_{bs}"] = float(np.abs(out - alone).max())
        bitwise &= bool(np.array_equal(out, alone))
    perm = np.random.default_rng(seed).permutation(len(x))
    shuffled = np.concatenate([run(x[perm[i:i + 16]]) for i in range(0, len(x), 16)])
    out = np.empty_like(shuffled)
    out[perm] = shuffled
    devs["shuffled_16"] = float(np.abs(out - alone).max())
    bitwise &= bool(np.array_equal(out, alone))
    scale = float(np.abs(alone).max())
    return {"samples": int(len(x)), "max_abs_deviation": max(devs.values()), "relative_to_max_output":
            max(devs.values()) / scale if scale else 0.0, "bitwise_identical": bitwise, "per_setting": devs}


def _bn_twin_contrast(source: ExportSource, x: np.ndarray) -> dict[str, Any]:
    """The BatchNorm twin (same topology, random init) in training mode (batch statistics) and eval mode."""
    twin = bn_twin(source)
    if twin is None:
        return {"status": "skipped", "reason": "no model_config in the manifest (timm source)"}
    out = {mode: batch_invariance(twin_runner(twin, mode), x) for mode in ("train", "eval")}
    return {"model": "bn twin of " + source.manifest["model"], **out}


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


def parity_report(export_dir: str | Path, out_dir: str | Path | None = None, *, dataset: str | None = None,
                  data_path: str | None = None, only: Sequence[str] | None = None, max_samples: int = 512,
                  invariance_samples: int = 64, log: Callable[[str], None] = print,
                  backends: Sequence[Backend] | None = None, per_block: bool = False, per_block_samples: int = 64,
                  batch_matrix: bool = False, save_outputs: bool = False, threads: int | None = None) -> dict[str, Any]:
    """Run every backend on the data, one active at a time, compare with the reference, and write
    parity.json / parity.md / parity.png to out_dir (default: beside the export dir, see
    default_report_dir). `backends`: a list already made by export_backends (default: all of them).
    A backend is judged by max(the precision table's floor, 2 x the unfolded torch model's own error in
    that dtype on these inputs) (precision.judged_tolerance). Forensics (nfdeploy.forensics): per_block
    (error at every block, first diverging block), batch_matrix (batch sizes 1..64 vs batch 1),
    save_outputs (outputs.npz + provenance.json for `nfdeploy compare`). threads: torch CPU threads and
    ONNX Runtime intra-op threads (of the backends made here; given `backends` keep their own)."""
    from nfdeploy.batch_matrix import MATRIX_BATCHES, batch_invariance_matrix, bn_twin_matrix
    from nfdeploy.metrics import framework_error
    from nfdeploy.per_block import per_block_report
    from nfdeploy.saved_outputs import OUTPUTS_FILE, PROVENANCE_FILE, save_outputs as write_saved_outputs

    export_dir = Path(export_dir)
    source = load_export_source(export_dir)
    if threads is not None:
        if threads < 1:
            raise ParityError(f"threads must be positive, got {threads}")
        torch.set_num_threads(threads)
    all_backends = list(backends) if backends is not None else export_backends(source, threads=threads)
    chosen = select_backends([b for b in all_backends if b.name != REFERENCE], only)
    ref_backend = next(b for b in all_backends if b.name == REFERENCE)
    out_dir = Path(out_dir) if out_dir is not None else default_report_dir(export_dir)
    x, y, data_desc, accuracy_na = load_parity_data(source, dataset, data_path, max_samples)
    log(f"parity of {source.manifest['model']} on {data_desc}; reference {REFERENCE}")
    if accuracy_na:
        log(f"  {accuracy_na}")
    with ref_backend:
        ref = run_batched(ref_backend, x)
    rows: list[dict[str, Any]] = [{**ref_backend.describe(), **judge(ref, ref, "fp64", y)}]
    outputs: dict[str, np.ndarray] = {}
    invariance: dict[str, Any] = {}
    matrix: dict[str, Any] = {}
    xi = x[:invariance_samples]
    # The reference framework's own error per dtype (the unfolded model in torch on CPU, same inputs).
    framework = {p: framework_error(source.model, x, ref, p)
                 for p in sorted({b.precision for b in chosen if b.unavailable_reason() is None})}
    for p, e in framework.items():
        if e is not None:
            log(f"  reference framework (torch CPU unfolded) {p}: rel L2 {e:.2e}")
    for b in chosen:
        reason = b.unavailable_reason()
        if reason:
            rows.append({**b.spec.describe(), "status": "skipped", "reason": reason})
            log(f"  {b.name}: skipped ({reason})")
            continue
        try:
            with b:
                out = run_batched(b, x)
                inv = batch_invariance(b.run, xi)
                if batch_matrix:
                    matrix[b.name] = batch_invariance_matrix(b.run, xi, get_precision(b.precision).torch_dtype, MATRIX_BATCHES)
        except BackendUnavailable as e:
            rows.append({**b.spec.describe(), "status": "skipped", "reason": str(e)})
            log(f"  {b.name}: skipped ({e})")
            continue
        except Exception as e:  # noqa: BLE001 - a runtime failing at run time is a finding, not a crash of the report
            rows.append({**b.spec.describe(), "status": "error", "reason": one_line(e, 240)})
            log(f"  {b.name}: error {rows[-1]['reason']}")
            continue
        outputs[b.name] = out
        invariance[b.name] = inv
        row = {**b.describe(), **judge(out, ref, b.precision, y, judged_tolerance(b.precision, framework.get(b.precision)))}
        rows.append(row)
        acc = f", accuracy {row['accuracy']:.2%}" if "accuracy" in row else ""
        log(f"  {b.name}: rel L2 {row['rel_l2']:.2e}, SQNR {row['sqnr_db'] or float('inf'):.1f} dB, top-1 agreement "
            f"{row['top1_agreement']:.2%}{acc} ({describe_tolerance(row['tolerance'])}) → {row['status']}" + (f" ({row['reason']})" if "reason" in row else ""))
    contrast = _bn_twin_contrast(source, xi)
    ran = [b for b in chosen if b.name in outputs]
    tols = {r["name"]: r["tolerance"] for r in rows if "tolerance" in r}
    blocks = None
    if per_block:
        xp = x[:per_block_samples]
        blocks = per_block_report(source, xp, ran, ref_backend, tols,
                                            {k: v[:per_block_samples] for k, v in outputs.items()}, log=log)
    if batch_matrix:
        matrix.update(bn_twin_matrix(source, xi, MATRIX_BATCHES))
    pairs = []
    for a, b in itertools.combinations(outputs, 2):
        r = compare_outputs(outputs[a], outputs[b])
        pairs.append({"a": a, "b": b, "rel_l2": r["rel_l2"], "max_abs": r["max_abs"],
                      "top1_agreement": top1_agreement(outputs[a], outputs[b])})
    failed = [r["name"] for r in rows if r.get("status") in ("FAIL", "error")]
    report = {"model": source.manifest["model"], "export_dir": str(export_dir), "data": data_desc,
              "accuracy": accuracy_na or "on the labelled test split", "reference": REFERENCE,
              "tolerances": tolerances(), "backends": rows, "batch_invariance": invariance,
              "bn_twin_contrast": contrast, "pairwise": pairs, "ok": not failed, "failed": failed,
              "framework_errors": framework, "out_dir": str(out_dir)}
    if blocks is not None:
        report["per_block"] = blocks
    if matrix:
        report["batch_matrix"] = {"batches": list(MATRIX_BATCHES), "samples": int(len(xi)), "backends": matrix}
    if save_outputs:
        described = {r["name"]: {k: r.get(k) for k in ("precision", "runtime", "device", "threads", "file", "providers")}
                     for r in rows if r["name"] in outputs or r["name"] == REFERENCE}
        write_saved_outputs(out_dir, source.manifest, x, y, {REFERENCE: ref, **outputs}, described, threads)
        report["saved_outputs"] = [OUTPUTS_FILE, PROVENANCE_FILE]
    write_parity_report(report, out_dir)
    return report


def write_parity_report(report: dict[str, Any], out_dir: Path) -> None:
    atomic_write_json(out_dir / "parity.json", report)
    ran = [r for r in report["backends"] if r.get("status") in ("pass", "FAIL")]
    skipped = [r for r in report["backends"] if r.get("status") in ("skipped", "error")]
    cols = ["name", "device", "precision", "math_mode", "max_abs", "rel_l2", "sqnr_db", "cosine", "top1_agreement"]
    cols += ["accuracy", "accuracy_delta"] if any("accuracy" in r for r in ran) else []
    cols += ["status"]
    inv_rows = [{"backend": k, "max_abs_deviation": v["max_abs_deviation"], "bitwise_identical": v["bitwise_identical"],
                 **v["per_setting"]} for k, v in report["batch_invariance"].items()]
    c = report["bn_twin_contrast"]
    if "train" in c:
        inv_rows += [{"backend": f"BN twin ({mode} mode)", "max_abs_deviation": c[mode]["max_abs_deviation"],
                      "bitwise_identical": c[mode]["bitwise_identical"], **c[mode]["per_setting"]} for mode in ("train", "eval")]
    md = [f"# Parity: {report['model']}\n", f"Data: {report['data']}. Accuracy: {report['accuracy']}. "
          f"Reference: {report['reference']} (the unfolded model in float64 on CPU). "
          f"Tolerances — {describe_tolerances()}; a non-finite output fails.\n",
          f"**{'All backends within tolerance' if report['ok'] else 'FAILED: ' + ', '.join(report['failed'])}**\n",
          "## Backends\n", markdown_table(ran, cols, floatfmt="{:.3g}"),
          "\n## Skipped\n", markdown_table([{"name": r["name"], "reason": r["reason"]} for r in skipped]) if skipped else "(none)\n",
          "\n## Batch invariance (each sample alone vs in batches of 3, 16, 64 and shuffled batches of 16)\n",
          markdown_table(inv_rows, floatfmt="{:.3g}") if inv_rows else "(no backend ran)\n",
          "\n## Pairwise (cross-runtime / cross-device)\n", markdown_table(report["pairwise"], floatfmt="{:.3g}")
          if report["pairwise"] else "(fewer than two backends ran)\n"]
    fw = {p: e for p, e in report.get("framework_errors", {}).items() if e is not None}
    if fw:
        md.insert(3, "Judged tolerance: rel L2 ≤ max(floor, 2 × the reference framework's own error in that dtype) — "
                  + "; ".join(f"{p}: floor {tolerances()[p]['rel_l2']:g}, torch CPU unfolded {p} error {e:.3g} → "
                              f"{judged_tolerance(p, e)['rel_l2']:.3g}" for p, e in fw.items()) + "\n")
    from nfdeploy.batch_matrix import matrix_rows, plot_batch_matrix
    from nfdeploy.per_block import per_block_markdown, plot_per_block

    if "per_block" in report:
        md += ["\n## Error per block\n", per_block_markdown(report["per_block"])]
        plot_per_block(report["per_block"], out_dir / "per_block.png", f"{report['model']}: error per block")
    if "batch_matrix" in report:
        bm = report["batch_matrix"]
        md += [f"\n## Batch-invariance matrix ({bm['samples']} samples; cell: share bitwise identical to batch 1 / "
               "max ULP / max rel L2 per sample)\n", markdown_table(matrix_rows(bm["backends"]))]
        plot_batch_matrix(bm["backends"], out_dir / "batch_matrix.png", f"{report['model']}: batch invariance")
    atomic_write_text(out_dir / "parity.md", "\n".join(md))
    _plot(report["backends"], out_dir / "parity.png")


__all__ = ["INVARIANCE_BATCHES", "ParityError", "batch_invariance", "load_parity_data", "parity_report",
           "write_parity_report"]
