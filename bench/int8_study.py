"""INT8 study: NF-ResNet vs its BatchNorm twin under explicit Q/DQ int8 (ONNX Runtime CPU).

Part 1 (digits): two trained runs (nf_digits and bn_digits, same recipe epochs and seed). For each
calibration method (minmax, percentile, entropy) and each int8 form (int8 = TensorRT S8S8, int8-ort =
ONNX Runtime U8S8): test-split accuracy fp32 vs int8, top-1 agreement and SQNR of the logits against
the float64 unfolded model, judged by the int8 rule of the precision table, and SQNR per block
(each block's output in the int8 graph vs the fp32 graph). Calibration: 512 training-split images.
Mixed mode: the same with the residual Adds of the last stage kept in float.

Part 2 (nf_resnet50 vs bn_resnet50, randomised, 224²): per-block SQNR on 224² tiles cropped from
scikit-learn's two sample photographs (ImageNet mean/std); calibrated on half the tiles, measured on
the other half.

    python -m bench.int8_study --nf-run runs/nf_digits --bn-run runs/bn_digits \
        --out bench/results/int8-cpu-2026-11-26
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

from nfdeploy.artifacts import atomic_write_json, atomic_write_text
from nfdeploy.artifacts.run_dir import load_run_model
from nfdeploy.export import ExportOptions, export_run
from nfdeploy.export.onnx_graph import block_values, run_with_values
from nfdeploy.export.quantize import (
    CALIBRATION_METHODS,
    INT8_FORMS,
    CalibrationData,
    CalibrationOptions,
    block_sqnr,
    lint_int8,
    quantize_graph,
    training_split_calibration,
)
from nfdeploy.export.study_inputs import export_randomised, photo_tiles
from nfdeploy.metrics import judge
from nfdeploy.perf import Stopwatch
from nfdeploy.render import markdown_table, pyplot, save_figure

quiet = lambda *a, **k: None  # noqa: E731


def last_stage_adds(fp32_path: Path, stages_from: int) -> list[str]:
    """The residual Add nodes of blocks >= stages_from (block outputs of the last stage)."""
    import onnx

    model = onnx.load(str(fp32_path))
    blocks = block_values(model)
    producers = {o: n for n in model.graph.node for o in n.output}
    return [
        producers[v["value"]].name
        for b, v in blocks.items()
        if b.startswith("blocks.") and int(b.split(".")[1]) >= stages_from and producers[v["value"]].op_type == "Add"
    ]


def digits_part(run: Path, work: Path, methods: list[str], samples: int, log) -> dict:
    model, resolved = load_run_model(run)
    from nfdeploy.config import recipe_from_resolved

    data = recipe_from_resolved(resolved["recipe"]).data.load()
    name = resolved["recipe"]["model"]["name"]
    exp = work / name
    export_run(run, exp, ExportOptions(precisions=("fp32",), check=False), log=quiet)
    fp32 = exp / "model.onnx"
    x, y = data.batch(data.test, torch.arange(len(data.test)))
    x, y = x.numpy(), y.numpy()
    with torch.no_grad():
        ref = model.double().eval()(torch.from_numpy(x).double()).numpy()
    calib = training_split_calibration(data, samples, seed=0)
    rows, blocks = [], {}
    fp32_out = run_with_values(fp32, [], x)[1]
    rows.append({"model": name, "form": "fp32", "method": "-", "kept": "-", **_row(fp32_out, ref, y, "fp32")})
    depths = model.cfg.depths
    last_stage = sum(depths[:-1])
    keep_sets = {"none": (), "last-stage adds": tuple(last_stage_adds(fp32, last_stage))}
    for method in methods:
        for form in INT8_FORMS:
            for kept, keep in keep_sets.items():
                if kept != "none" and (form != "int8" or method != methods[0]):
                    continue  # mixed mode: one method, the TensorRT form
                path = work / f"{name}.{form}.{method}.{kept.replace(' ', '-')}.onnx"
                opts = CalibrationOptions(method=method, samples=samples, keep=keep)
                info = quantize_graph(fp32, path, form, calib, opts)
                import onnx

                lint = lint_int8(onnx.load(str(path)), form, allow_batchnorm=name.startswith("bn_"))
                out = run_with_values(path, [], x)[1]
                row = {
                    "model": name,
                    "form": form,
                    "method": method,
                    "kept": kept,
                    **_row(out, ref, y, form),
                    "lint_ok": lint["ok"],
                    "dq_consumers": lint["dq_consumers"],
                    "quantize_seconds": info["quantize_seconds"],
                }
                rows.append(row)
                if kept == "none" and form == "int8":
                    blocks[method] = block_sqnr(fp32, path, x)
                elif kept != "none":
                    blocks[f"{method}, {kept}"] = block_sqnr(fp32, path, x)
                log(
                    f"{name} {form} {method} kept={kept}: acc {row['accuracy']:.2%} "
                    f"(ref {row['reference_accuracy']:.2%}), "
                    f"agreement {row['top1_agreement']:.2%}, SQNR {row['sqnr_db']:.1f} dB → {row['status']}"
                )
    return {
        "model": name,
        "run": str(run),
        "epochs": resolved["recipe"]["train"]["epochs"],
        "seed": resolved["recipe"]["train"]["seed"],
        "calibration": calib.describe(),
        "test_images": int(len(x)),
        "rows": rows,
        "blocks": blocks,
        "mixed_mode_nodes": keep_sets["last-stage adds"],
    }


def _row(out, ref, y, prec) -> dict:
    r = judge(out, ref, prec, y)
    keys = (
        "accuracy",
        "reference_accuracy",
        "accuracy_drop",
        "top1_agreement",
        "sqnr_db",
        "rel_l2",
        "status",
        "reason",
    )
    return {k: r.get(k) for k in keys if k in r}


def resnet50_part(work: Path, log) -> dict:
    x = photo_tiles()
    calib_x, eval_x = x[0::2], x[1::2]
    out = {
        "tiles": int(len(x)),
        "calibration_tiles": int(len(calib_x)),
        "evaluation_tiles": int(len(eval_x)),
        "models": {},
    }
    for name in ("nf_resnet50", "bn_resnet50"):
        fp32 = export_randomised(name, work / f"{name}.onnx")
        calib = CalibrationData(calib_x, "sklearn sample photos (alternate tiles)", "photos")
        res = {}
        for method in ("minmax", "percentile"):
            path = work / f"{name}.int8.{method}.onnx"
            sw = Stopwatch()
            quantize_graph(fp32, path, "int8", calib, CalibrationOptions(method=method, samples=len(calib_x)))
            res[method] = block_sqnr(fp32, path, eval_x)
            log(
                f"{name} {method}: quantized + measured in {sw.seconds():.0f} s; logits SQNR "
                f"{res[method][-1]['sqnr_db']:.1f} dB, worst block "
                f"{min(r['sqnr_db'] for r in res[method][:-1]):.1f} dB"
            )
        out["models"][name] = res
    return out


def plot_blocks(series: dict[str, list[dict]], path: Path, title: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4))
    for label, rows in series.items():
        ax.plot([r["block"] for r in rows], [r["sqnr_db"] for r in rows], marker="o", label=label)
    ax.set_ylabel("SQNR vs fp32 graph (dB)"), ax.set_title(title), ax.grid(alpha=0.3), ax.legend(fontsize=7)
    ax.tick_params(axis="x", rotation=60, labelsize=7)
    save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nf-run", type=Path)
    ap.add_argument("--bn-run", type=Path)
    ap.add_argument("--out", type=Path, default=Path("bench/results/int8-cpu-2026-11-26"))
    ap.add_argument("--methods", default=",".join(CALIBRATION_METHODS))
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--resnet50", action="store_true", help="Also the nf_resnet50 vs bn_resnet50 per-block study.")
    args = ap.parse_args()
    lines: list[str] = []

    def log(msg: str) -> None:
        print(msg, flush=True)
        lines.append(msg)

    report = {
        "command": "python -m bench.int8_study " + " ".join(sys.argv[1:]),
        "load_average_start": os.getloadavg(),
        "cpu_count": os.cpu_count(),
    }
    with tempfile.TemporaryDirectory(prefix="int8-study-") as tmp:
        work = Path(tmp)
        if args.nf_run and args.bn_run:
            report["digits"] = [
                digits_part(r, work, args.methods.split(","), args.samples, log) for r in (args.nf_run, args.bn_run)
            ]
        if args.resnet50:
            report["resnet50"] = resnet50_part(work, log)
    report["load_average_end"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "int8_study.json", report)
    md = [
        "# INT8 study (ONNX Runtime CPU)\n",
        f"Command: `{report['command']}`\n",
        f"Load average (1/5/15 min) at start {report['load_average_start']}, end {report['load_average_end']} "
        f"on {report['cpu_count']} cores (other jobs shared the machine).\n",
    ]
    if "digits" in report:
        rows = [r for d in report["digits"] for r in d["rows"]]
        md += [
            "## Digits: NF vs BN twin, per calibration method and int8 form\n",
            "Test split ({} images); reference = unfolded model in float64. Calibration: {}. Rule: top-1 agreement "
            "≥ 99% and accuracy drop ≤ 0.5 points.\n".format(
                report["digits"][0]["test_images"], report["digits"][0]["calibration"]
            ),
            "Runs: "
            + "; ".join(f"{d['model']} ({d['epochs']} epochs, seed {d['seed']}, {d['run']})" for d in report["digits"])
            + "\n",
            markdown_table(
                rows,
                [
                    "model",
                    "form",
                    "method",
                    "kept",
                    "reference_accuracy",
                    "accuracy",
                    "accuracy_drop",
                    "top1_agreement",
                    "sqnr_db",
                    "status",
                ],
                floatfmt="{:.4g}",
            ),
            "\n## Digits: SQNR per block (int8 TensorRT form vs the fp32 graph)\n",
        ]
        for d in report["digits"]:
            brow = {}
            for label, rs in d["blocks"].items():
                for r in rs:
                    brow.setdefault(r["block"], {"block": r["block"], "ref_rms": r["ref_rms"]})[label] = r["sqnr_db"]
            md += [f"### {d['model']}\n", markdown_table(list(brow.values()), floatfmt="{:.3g}"), ""]
            plot_blocks(d["blocks"], args.out / f"blocks_{d['model']}.png", f"{d['model']}: per-block SQNR, int8")
    if "resnet50" in report:
        r50 = report["resnet50"]
        md += [
            "## nf_resnet50 vs bn_resnet50 (randomised, 224², int8 TensorRT form): SQNR per block\n",
            f"{r50['tiles']} tiles of 224² from scikit-learn's sample photos; "
            f"calibrated on {r50['calibration_tiles']}, "
            f"measured on the other {r50['evaluation_tiles']}.\n",
        ]
        brow = {}
        series = {}
        for name, per in r50["models"].items():
            for method, rs in per.items():
                series[f"{name} {method}"] = rs
                for r in rs:
                    brow.setdefault(r["block"], {"block": r["block"]})[f"{name} {method}"] = r["sqnr_db"]
        md += [markdown_table(list(brow.values()), floatfmt="{:.3g}"), ""]
        plot_blocks(series, args.out / "blocks_resnet50.png", "nf_resnet50 vs bn_resnet50: per-block SQNR, int8")
    md += ["\n## Log\n", "```", *lines, "```"]
    atomic_write_text(args.out / "int8_study.md", "\n".join(md) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
