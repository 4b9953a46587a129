"""Parity: every backend against the float64 unfolded PyTorch model, on real labelled data.

Per backend: max |error|, relative L2 error, cosine similarity, top-1 agreement, accuracy and its
delta, judged against the tolerance of its precision.  Batch invariance: each sample's output alone
vs inside batches of several sizes and shuffled batches (an NF net has no batch statistics; the
BatchNorm twin in training mode is the contrast).  Cross-hardware: every pair of backends.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from nfdeploy.artifacts import atomic_write_json, atomic_write_text
from nfdeploy.fold import compare_outputs
from nfdeploy.reports import _pyplot, markdown_table, save_figure
from nfdeploy.runtime.base import Backend, run_batched
from nfdeploy.runtime.registry import REFERENCE, ExportSource, Skipped, load_export_source, make_backends

# Tolerances per precision: relative L2 error vs the float64 reference, and minimum top-1 agreement.
TOLERANCES: dict[str, dict[str, float | None]] = {
    "fp64": {"rel_l2": 1e-5, "top1_agreement": 1.0},
    "fp32": {"rel_l2": 1e-5, "top1_agreement": 1.0},
    "tf32": {"rel_l2": 1e-3, "top1_agreement": None},
    "fp16": {"rel_l2": 1e-2, "top1_agreement": 0.995},
    "bf16": {"rel_l2": 1e-2, "top1_agreement": 0.995},
}
INVARIANCE_BATCHES = (3, 16, 64)


class ParityError(RuntimeError):
    """Bad parity input (data that does not fit the model); one line."""


def load_parity_data(source: ExportSource, dataset: str | None = None, path: str | None = None,
                     max_samples: int = 512) -> tuple[np.ndarray, np.ndarray, str]:
    """Normalised test images and labels: the run's dataset by default, or another one `train` reads."""
    from nfdeploy.config import recipe_from_resolved

    if source.resolved is None and dataset is None:
        raise ParityError("this export has no training run to take data from; pass --dataset (and --data-path)")
    c, h, _ = source.input_shape
    if source.resolved is not None:
        d = recipe_from_resolved(source.resolved["recipe"]).data
    else:
        from nfdeploy.config import DataSection

        d = DataSection(input_size=h, in_chans=c)
    if dataset is not None:
        d = replace(d, dataset=dataset, path=path or "")
    data = d.load(input_size=h)
    if data.in_chans != c:
        raise ParityError(f"dataset {data.name} has {data.in_chans} channels, the model expects {c}")
    classes = source.manifest["source"].get("model_config", {}).get("num_classes")
    if classes is not None and data.num_classes != classes:
        raise ParityError(f"dataset {data.name} has {data.num_classes} classes, the model has {classes}")
    n = min(max_samples, len(data.test))
    x, y = data.batch(data.test, torch.arange(n))
    return x.numpy(), y.numpy(), f"{data.name} test split ({n} images)"


def compare_to_reference(out: np.ndarray, ref: np.ndarray, labels: np.ndarray | None, precision: str,
                         tolerance: dict[str, float | None] | None = None) -> dict[str, Any]:
    """Errors, top-1 agreement and accuracy of `out` against `ref`, judged against `tolerance`
    (default: TOLERANCES[precision])."""
    o, r = torch.from_numpy(out).double(), torch.from_numpy(ref).double()
    row = compare_outputs(r, o)
    row["top1_agreement"] = float((o.argmax(1) == r.argmax(1)).double().mean())
    if labels is not None:
        lab = torch.from_numpy(labels)
        row["accuracy"] = float((o.argmax(1) == lab).double().mean())
        row["reference_accuracy"] = float((r.argmax(1) == lab).double().mean())
        row["accuracy_delta"] = row["accuracy"] - row["reference_accuracy"]
    tol = tolerance or TOLERANCES[precision]
    ok = row["rel_l2"] <= tol["rel_l2"] and (tol["top1_agreement"] is None or row["top1_agreement"] >= tol["top1_agreement"])
    row.update(tolerance=tol, status="pass" if ok else "FAIL")
    return row


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
    from nfdeploy.models.nf_resnet import NFResNet, NFResNetCfg

    cfg = source.manifest["source"].get("model_config")
    if not cfg:
        return {"status": "skipped", "reason": "no model_config in the manifest (timm source)"}
    torch.manual_seed(0)
    twin = NFResNet(replace(NFResNetCfg.from_dict(cfg), norm="bn"))
    out = {}
    for mode in ("train", "eval"):
        twin.train(mode == "train")

        @torch.no_grad()
        def run(b: np.ndarray) -> np.ndarray:  # train mode: BN normalises with this batch's statistics
            return twin(torch.from_numpy(b)).numpy()

        out[mode] = batch_invariance(run, x)
    return {"model": "bn twin of " + source.manifest["model"], **out}


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    plt = _pyplot()
    ran = [r for r in rows if r.get("status") in ("pass", "FAIL") and r["name"] != REFERENCE]
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(ran) + 2), 4))
    vals = [max(r["rel_l2"], 1e-17) for r in ran]
    colors = ["tab:green" if r["status"] == "pass" else "tab:red" for r in ran]
    ax.bar(range(len(ran)), vals, color=colors)
    for i, r in enumerate(ran):
        ax.hlines(r["tolerance"]["rel_l2"], i - 0.4, i + 0.4, colors="black", linestyles="--")
    ax.set_xticks(range(len(ran)), [r["name"] for r in ran], rotation=40, ha="right", fontsize=8)
    ax.set_yscale("log"), ax.set_ylabel("relative L2 error vs float64 reference"), ax.grid(alpha=0.3, axis="y")
    ax.set_title("parity per backend (dashed: tolerance)")
    save_figure(fig, path)


def parity_report(export_dir: str | Path, out_dir: str | Path | None = None, *, dataset: str | None = None,
                  data_path: str | None = None, only: list[str] | None = None, max_samples: int = 512,
                  invariance_samples: int = 64, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every backend on the data, compare, write parity.json / parity.md / parity.png to out_dir."""
    export_dir = Path(export_dir)
    out_dir = Path(out_dir) if out_dir is not None else export_dir / "reports"
    source = load_export_source(export_dir)
    x, y, data_desc = load_parity_data(source, dataset, data_path, max_samples)
    backends = make_backends(source, only)
    ref_backend = backends[0]
    assert isinstance(ref_backend, Backend) and ref_backend.name == REFERENCE
    log(f"parity of {source.manifest['model']} on {data_desc}; reference {REFERENCE}")
    ref = run_batched(ref_backend, x)
    rows: list[dict[str, Any]] = []
    outputs: dict[str, np.ndarray] = {}
    for b in backends:
        if isinstance(b, Skipped):
            rows.append(b.describe())
            log(f"  {b.name}: skipped ({b.reason})")
            continue
        try:
            out = ref if b is ref_backend else run_batched(b, x)
        except Exception as e:  # a runtime failing at run time is a finding, not a crash of the report
            rows.append({**b.describe(), "status": "error", "reason": f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"})
            log(f"  {b.name}: error {rows[-1]['reason']}")
            continue
        outputs[b.name] = out
        row = {**b.describe(), **compare_to_reference(out, ref, y, b.precision)}
        rows.append(row)
        log(f"  {b.name}: rel L2 {row['rel_l2']:.2e} (≤ {row['tolerance']['rel_l2']:g}), top-1 agreement "
            f"{row['top1_agreement']:.2%}, accuracy {row.get('accuracy', float('nan')):.2%} → {row['status']}")
    xi = x[:invariance_samples]
    invariance = {}
    for b in backends:
        if isinstance(b, Backend) and b.name in outputs and b.name != REFERENCE and (
                b.name in ("torch-cpu-fp32-folded", "onnxruntime-cpu-fp32") or b.device == "cuda"):
            invariance[b.name] = batch_invariance(b.run, xi)
    contrast = _bn_twin_contrast(source, xi)
    names = [n for n in outputs if n != REFERENCE]
    pairs = []
    for a, b in itertools.combinations(names, 2):
        r = compare_outputs(torch.from_numpy(outputs[a]), torch.from_numpy(outputs[b]))
        agree = float((outputs[a].argmax(1) == outputs[b].argmax(1)).mean())
        pairs.append({"a": a, "b": b, "rel_l2": r["rel_l2"], "max_abs": r["max_abs"], "top1_agreement": agree})
    failed = [r["name"] for r in rows if r.get("status") in ("FAIL", "error")]
    report = {"model": source.manifest["model"], "export_dir": str(export_dir), "data": data_desc,
              "reference": REFERENCE, "tolerances": TOLERANCES, "backends": rows, "batch_invariance": invariance,
              "bn_twin_contrast": contrast, "pairwise": pairs, "ok": not failed, "failed": failed}
    _write(report, out_dir)
    return report


def _write(report: dict[str, Any], out_dir: Path) -> None:
    atomic_write_json(out_dir / "parity.json", report)
    ran = [r for r in report["backends"] if r.get("status") in ("pass", "FAIL")]
    skipped = [r for r in report["backends"] if r.get("status") in ("skipped", "error")]
    cols = ["name", "device", "precision", "math_mode", "max_abs", "rel_l2", "cosine", "top1_agreement", "accuracy",
            "accuracy_delta", "status"]
    tol = "; ".join(f"{p}: rel L2 ≤ {t['rel_l2']:g}" + (f", top-1 agreement ≥ {t['top1_agreement']:.1%}"
                                                         if t["top1_agreement"] else "") for p, t in TOLERANCES.items())
    inv_rows = [{"backend": k, "max_abs_deviation": v["max_abs_deviation"], "bitwise_identical": v["bitwise_identical"],
                 **v["per_setting"]} for k, v in report["batch_invariance"].items()]
    c = report["bn_twin_contrast"]
    if "train" in c:
        inv_rows += [{"backend": f"BN twin ({mode} mode)", "max_abs_deviation": c[mode]["max_abs_deviation"],
                      "bitwise_identical": c[mode]["bitwise_identical"], **c[mode]["per_setting"]} for mode in ("train", "eval")]
    md = [f"# Parity: {report['model']}\n", f"Data: {report['data']}. Reference: {report['reference']} "
          f"(the unfolded model in float64 on CPU). Tolerances — {tol}.\n",
          f"**{'All backends within tolerance' if report['ok'] else 'FAILED: ' + ', '.join(report['failed'])}**\n",
          "## Backends\n", markdown_table(ran, cols, floatfmt="{:.3g}"),
          "\n## Skipped\n", markdown_table([{"name": r["name"], "reason": r["reason"]} for r in skipped]) if skipped else "(none)\n",
          "\n## Batch invariance (each sample alone vs in batches of 3, 16, 64 and shuffled batches of 16)\n",
          markdown_table(inv_rows, floatfmt="{:.3g}") if inv_rows else "(no backend ran)\n",
          "\n## Pairwise (cross-runtime / cross-device)\n", markdown_table(report["pairwise"], floatfmt="{:.3g}")
          if report["pairwise"] else "(fewer than two backends ran)\n"]
    atomic_write_text(out_dir / "parity.md", "\n".join(md))
    _plot(report["backends"], out_dir / "parity.png")
