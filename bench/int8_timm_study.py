"""INT8 study on timm NormFreeNets: where the TensorRT form (int8, S8S8 symmetric) loses signal, and what fixes it.

Per model (randomised by nfdeploy.interop.timm.randomize_timm_(seed=0), because timm's own init zeroes each
block's last conv gain, so every residual branch is exactly zero and int8 error inside the branches never
reaches the logits; folded by fold_timm_model, exported fp32 ONNX at SIZE² by export_module): 160² tiles of
scikit-learn's two sample photographs (stride 80) plus their horizontal flips, ImageNet mean/std; calibration
on alternate tiles, evaluation on the others. The reference is the fp32 ONNX graph on ONNX Runtime CPU.

- int8 (TensorRT form) with each calibration method; int8-ort (U8S8, asymmetric activations) minmax as contrast:
  logits SQNR, top-1 agreement, the int8 rule of the precision table (nfdeploy.metrics.judge, no labels).
- per-block SQNR (quantize.block_sqnr; every ORT session on one thread, one_thread_ort) for the baseline.
- per quantized tensor (each activation QuantizeLinear of the int8 graph): "local" SQNR (the int8 graph's own
  float tensor vs its DequantizeLinear output: this quantizer's noise alone) and "accumulated" SQNR (the DQ output
  vs the fp32 graph's same-named tensor), classified by the fp32 producer (post-SiLU, post-ReLU, gated branch,
  residual add, conv output, pooled...), summarised per kind.
- mixed mode (CalibrationOptions.keep, the best method): gates (every node in an attn scope), residual Adds,
  first conv + head, the consumers of the 5 tensors of lowest local SQNR, and all of these together.

Every ONNX Runtime session of the process is held to one thread (the calibrator's included:
nfdeploy.runtime.ort.ort_threads_limited).

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD/tests/torchvision_shim nice -n 19 python -m bench.int8_timm_study \
        [--models eca_nfnet_l0,nf_regnet_b0,nf_resnet26,nf_seresnet26,nf_ecaresnet26] [--methods minmax,percentile]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from nfdeploy.perf import Stopwatch

OUT = Path(__file__).parent / "results" / "int8-timm-cpu-2026-12-01"
SIZE = 160
ANALYSIS_TILES = 16  # evaluation tiles used for the per-tensor values (memory)
DEFAULT_MODELS = "eca_nfnet_l0,nf_regnet_b0,nf_resnet26,nf_seresnet26,nf_ecaresnet26"


def photo_set(size: int) -> np.ndarray:
    """photo_tiles at `size` and their horizontal flips."""
    from nfdeploy.export.study_inputs import photo_tiles

    x = photo_tiles(size)
    return np.ascontiguousarray(np.concatenate([x, x[..., ::-1]]))


def run(path, values, x):
    from nfdeploy.export.onnx_graph import run_with_values

    return run_with_values(path, values, x, threads=1)


def scopes(n) -> list[str]:
    from nfdeploy.export.onnx_graph import node_scopes

    return node_scopes(n)


def tensor_kind(name: str, producer: dict, graph_input: str) -> str:
    if name == graph_input:
        return "network input"
    p = producer.get(name)
    if p is None:
        return "?"
    in_attn = any(".attn" in s or s.startswith("attn") for s in scopes(p))
    op = p.op_type
    if op == "Mul":
        a, b = p.input[0], p.input[1]
        pa, pb = producer.get(a), producer.get(b)
        if (pb is not None and pb.op_type == "Sigmoid" and pb.input[0] == a) or (
            pa is not None and pa.op_type == "Sigmoid" and pa.input[0] == b
        ):
            kind = "post-SiLU"
        elif in_attn:
            return "gated branch (x*gate)"
        else:
            kind = "Mul (scale)"
    elif op == "Relu":
        kind = "post-ReLU"
    elif op in ("Gelu", "Sigmoid", "Tanh", "Elu", "LeakyRelu"):
        kind = f"post-{op}"
    elif op == "Add":
        kind = "residual add"
    elif op == "Conv":
        kind = "conv output"
    elif op in ("AveragePool", "MaxPool"):
        kind = f"{op} output"
    elif op in ("Reshape", "ReduceMean", "GlobalAveragePool", "Flatten", "Squeeze"):
        kind = "pooled (mean)"
    else:
        kind = op
    return f"gate: {kind}" if in_attn else kind


def per_tensor(fp32_path: Path, int8_path: Path, x: np.ndarray) -> list[dict]:
    """Local and accumulated SQNR at every activation Q/DQ boundary of the int8 graph (one per float tensor)."""
    import onnx

    from nfdeploy.metrics import sqnr_db

    f = onnx.load(str(fp32_path))
    q = onnx.load(str(int8_path))
    inits = {i.name for i in q.graph.initializer}
    fprod = {o: n for n in f.graph.node for o in n.output}
    fcons = defaultdict(list)
    for n in f.graph.node:
        for i in n.input:
            fcons[i].append(n)
    qprod = {o: n for n in q.graph.node for o in n.output}
    pairs = {}  # float tensor -> a DQ output of it
    for n in q.graph.node:
        if n.op_type != "DequantizeLinear":
            continue
        qn = qprod.get(n.input[0])
        if qn is None or qn.op_type != "QuantizeLinear" or qn.input[0] in inits:
            continue
        pairs.setdefault(qn.input[0], (n.output[0], qn))
    inames = {i.name: i for i in q.graph.initializer}
    rows = []
    names = list(pairs)
    gin = f.graph.input[0].name
    chunk = 24
    for k in range(0, len(names), chunk):
        part = names[k : k + chunk]
        have = [t for t in part if t in fprod or t == gin]
        ref_vals = run(fp32_path, [t for t in have if t != gin], x)[0]
        ref = dict(zip([t for t in have if t != gin], ref_vals))
        if gin in have:
            ref[gin] = x.astype(np.float64)
        qv = run(int8_path, [t for t in part if t != gin] + [pairs[t][0] for t in part], x)[0]
        own = dict(zip([t for t in part if t != gin], qv[: len([t for t in part if t != gin])]))
        if gin in part:
            own[gin] = x.astype(np.float64)
        deq = dict(zip(part, qv[len([t for t in part if t != gin]) :]))
        for t in part:
            qn = pairs[t][1]
            scale = onnx.numpy_helper.to_array(inames[qn.input[1]]) if qn.input[1] in inames else None
            r = ref.get(t)
            o = own[t]
            amax = (
                np.abs(o).max(axis=tuple(k for k in range(o.ndim) if k != 1))
                if o.ndim >= 2
                else np.abs(o).max(keepdims=True)
            )
            rows.append(
                {
                    "tensor": t,
                    "kind": tensor_kind(t, fprod, gin),
                    "scope": (scopes(fprod[t]) or [""])[-1] if t in fprod else "input",
                    "consumers": [c.name for c in fcons.get(t, []) if c.op_type in ("Conv", "Gemm", "Add")],
                    "local_sqnr_db": sqnr_db(own[t], deq[t]),
                    "accumulated_sqnr_db": sqnr_db(r, deq[t]) if r is not None else None,
                    "ref_min": float(r.min()) if r is not None else None,
                    "ref_max": float(r.max()) if r is not None else None,
                    "ref_rms": float(np.sqrt(np.mean(np.square(r)))) if r is not None else None,
                    "scale": float(np.ravel(scale)[0]) if scale is not None else None,
                    "crest_db": float(20 * np.log10(np.abs(o).max() / max(np.sqrt(np.mean(np.square(o))), 1e-30))),
                    "channel_spread": float(amax.max() / max(np.median(amax), 1e-30)),
                    "clipped_share": float(np.mean(np.abs(own[t]) > 127.5 * float(np.ravel(scale)[0])))
                    if scale is not None
                    else None,
                }
            )
        del ref_vals, qv, ref, own, deq
    return rows


def kind_summary(rows: list[dict]) -> list[dict]:
    by = defaultdict(list)
    for r in rows:
        by[r["kind"]].append(r)
    out = []
    for kind, rs in sorted(by.items()):
        loc = [r["local_sqnr_db"] for r in rs if r["local_sqnr_db"] is not None]
        acc = [r["accumulated_sqnr_db"] for r in rs if r["accumulated_sqnr_db"] is not None]
        neg = [(-r["ref_min"] / r["ref_max"]) for r in rs if r["ref_max"] and r["ref_max"] > 0]
        out.append(
            {
                "kind": kind,
                "tensors": len(rs),
                "local_median_db": float(np.median(loc)) if loc else None,
                "local_min_db": float(np.min(loc)) if loc else None,
                "accumulated_median_db": float(np.median(acc)) if acc else None,
                "crest_db_median": float(np.median([r["crest_db"] for r in rs])),
                "channel_spread_median": float(np.median([r["channel_spread"] for r in rs])),
                "neg_over_pos_range_median": float(np.median(neg)) if neg else None,
                "clipped_share_max": max((r["clipped_share"] or 0) for r in rs),
            }
        )
    return out


def keep_sets(fp32_path: Path) -> dict[str, list[str]]:
    import onnx

    m = onnx.load(str(fp32_path))
    nodes = m.graph.node
    gin = m.graph.input[0].name
    gates = [n.name for n in nodes if any(".attn" in s for s in scopes(n))]
    adds = [n.name for n in nodes if n.op_type == "Add"]
    first = [n.name for n in nodes if n.op_type == "Conv" and gin in n.input]
    last = [
        n.name
        for n in nodes
        if n.op_type == "Gemm" or (n.op_type == "Conv" and any(s.endswith("final_conv") for s in scopes(n)))
    ]
    out = {}
    if gates:
        out["gates (attn nodes)"] = gates
    out["residual adds"] = adds
    out["first conv + head"] = first + last
    return out


def quantize_variant(
    fp32_path: Path, out_path: Path, calib, method: str, symmetric: bool = True, percentile: float | None = None
) -> None:
    """DIAGNOSTIC, not a deployable nfdeploy form: quantize_graph's TensorRT branch (same placement, dedicated
    pairs, per-channel int8 weights, float bias, unfused pairs dropped) with either asymmetric uint8 activations
    (which TensorRT cannot run: it isolates "symmetric int8 after SiLU") or another calibration percentile (the
    library fixes 99.999)."""
    import onnx
    from onnxruntime import quantization as ortq

    from nfdeploy.export import quantize as q

    model = onnx.load(str(fp32_path))
    extra = {
        "ActivationSymmetric": symmetric,
        "WeightSymmetric": True,
        "QuantizeBias": False,
        "OpTypesToExcludeOutputQuantization": list(q.TRT_QUANTIZED_OPS),
        "DedicatedQDQPair": True,
    }
    if percentile is not None:
        extra["CalibPercentile"] = percentile
    with q.quantizer_messages():
        ortq.quantize_static(
            str(fp32_path),
            str(out_path),
            q.calibration_reader(calib.images, model.graph.input[0].name),
            quant_format=ortq.QuantFormat.QDQ,
            per_channel=True,
            reduce_range=False,
            activation_type=ortq.QuantType.QInt8 if symmetric else ortq.QuantType.QUInt8,
            weight_type=ortq.QuantType.QInt8,
            op_types_to_quantize=list(q.TRT_QUANTIZED_OPS),
            calibrate_method=getattr(ortq.CalibrationMethod, q.CALIBRATION_METHODS[method]),
            extra_options=extra,
        )
    q.drop_unfused_pairs(out_path, q.FUSED_CONSUMERS["int8"])


def row_of(out, ref, label: dict) -> dict:
    from nfdeploy.metrics import judge

    r = judge(out, ref, "int8")
    return {
        **label,
        "sqnr_db": r["sqnr_db"],
        "top1_agreement": r["top1_agreement"],
        "rel_l2": r["rel_l2"],
        "status": r["status"],
        "reason": r.get("reason"),
    }


def study(name: str, work: Path, methods: list[str], log) -> dict:
    import onnx
    import torch

    from nfdeploy.export.onnx_graph import export_module
    from nfdeploy.export.quantize import CalibrationData, CalibrationOptions, block_sqnr, lint_int8, quantize_graph
    from nfdeploy.interop.timm import create_timm_model, fold_timm_model, randomize_timm_

    t_model = Stopwatch()
    model = create_timm_model(name).double().eval()
    # timm's own init: are the residual branches zero (skipinit gain 0, or conv3 gain 0 without skipinit)?
    zero_branches, n_blocks = 0, 0
    for b in model.modules():
        if hasattr(b, "conv3") and hasattr(b, "skipinit_gain"):
            n_blocks += 1
            g = b.skipinit_gain if b.skipinit_gain is not None else getattr(b.conv3, "gain", None)
            zero_branches += int(g is not None and bool(torch.all(g == 0)))
    acts = sorted(
        {
            type(m).__name__
            for m in model.modules()
            if "act" in type(m).__name__.lower() or type(m).__name__ in ("SiLU", "ReLU", "GELU")
        }
    )
    attn = sorted(
        {type(m).__name__ for m in model.modules() if type(m).__name__ in ("SEModule", "EcaModule", "CecaModule")}
    )
    params = sum(p.numel() for p in model.parameters())
    randomize_timm_(model, seed=0)
    net, _ = fold_timm_model(model, input_size=(SIZE, SIZE), dtype=torch.float32)
    fp32 = work / f"{name}.onnx"
    export_module(net, fp32, (3, SIZE, SIZE), opset=18)
    del net, model
    x = photo_set(SIZE)
    calib_x, eval_x = x[0::2], x[1::2]
    calib = CalibrationData(calib_x, f"sklearn sample photos, alternate {SIZE}² tiles (+ flips)", "photos")
    ref = run(fp32, [], eval_x)[1]
    top1 = ref.argmax(1)
    fp32_info = {
        "distinct_top1": int(len(set(top1.tolist()))),
        "eval_tiles": int(len(eval_x)),
        "logit_std_across_tiles_over_within": float(ref.std(0).mean() / ref.std(1).mean()),
        "top2_margin_median": float(np.median(np.sort(ref, 1)[:, -1] - np.sort(ref, 1)[:, -2])),
    }
    log(
        f"{name}: params {params / 1e6:.1f} M, acts {acts}, attn {attn}, "
        f"timm-init zero branches {zero_branches}/{n_blocks}; "
        f"fp32 distinct top-1 {fp32_info['distinct_top1']}/{len(eval_x)}, {t_model.seconds():.0f} s"
    )
    rows, res = [], {}

    def quant(form, method, keep=(), label=None, variant=None):
        path = work / f"{name}.{form}.{method}.{len(rows)}.onnx"
        sw = Stopwatch()
        if variant:
            quantize_variant(fp32, path, calib, method, **variant)
            kept_nodes, lint_ok = 0, None
        else:
            info = quantize_graph(
                fp32, path, form, calib, CalibrationOptions(method=method, samples=len(calib_x), keep=tuple(keep))
            )
            kept_nodes, lint_ok = len(info["kept_in_float"]), lint_int8(onnx.load(str(path)), form)["ok"]
        out = run(path, [], eval_x)[1]
        row = row_of(
            out,
            ref,
            {
                "form": form,
                "method": method,
                "kept": label or "none",
                "kept_nodes": kept_nodes,
                "lint_ok": lint_ok,
                "seconds": sw.seconds(),
            },
        )
        rows.append(row)
        log(
            f"  {name} {form} {method} kept={row['kept']} ({row['kept_nodes']} nodes): SQNR {row['sqnr_db']:.1f} dB, "
            f"agreement {row['top1_agreement']:.1%} -> {row['status']} ({row['seconds']:.0f} s)"
        )
        return path, row

    base = {}
    for method in methods:
        base[method] = quant("int8", method)
    quant("int8-ort", "minmax")
    # diagnostics (not deployable as such): the TensorRT placement with asymmetric u8 activations, and lower percentiles
    for m in dict.fromkeys(["minmax", "percentile"]):
        quant("diag: int8 placement, u8 asymmetric act., 8-bit w", m, variant={"symmetric": False})
    for pct in (99.99, 99.9):
        quant(f"diag: int8, percentile {pct}", "percentile", variant={"percentile": pct})
    best = max(methods, key=lambda m: base[m][1]["sqnr_db"])
    sw = Stopwatch()
    res["blocks"] = {m: block_sqnr(fp32, base[m][0], eval_x) for m in methods}  # one ORT thread: ort_threads_limited
    worst = sorted(res["blocks"][best][:-1], key=lambda r: r["sqnr_db"])[:3]
    drops = []
    prev = None
    for r in res["blocks"][best][:-1]:
        if prev is not None:
            drops.append({"block": r["block"], "drop_db": prev - r["sqnr_db"]})
        prev = r["sqnr_db"]
    res["worst_blocks"] = worst
    res["largest_block_drops"] = sorted(drops, key=lambda d: -d["drop_db"])[:3]
    log(
        f"  {name} per-block ({best}): worst {[(w['block'], round(w['sqnr_db'], 1)) for w in worst]}, largest drops "
        f"{[(d['block'], round(d['drop_db'], 1)) for d in res['largest_block_drops']]} "
        f"({sw.seconds():.0f} s)"
    )
    sw = Stopwatch()
    tensors = {m: per_tensor(fp32, base[m][0], eval_x[:ANALYSIS_TILES]) for m in dict.fromkeys(["minmax", best])}
    res["tensors"] = tensors
    res["kinds"] = {m: kind_summary(t) for m, t in tensors.items()}
    for m, ks in res["kinds"].items():
        log(
            f"  {name} per-kind ({m}): "
            + "; ".join(
                f"{k['kind']} x{k['tensors']} local med {k['local_median_db']:.1f} min {k['local_min_db']:.1f} dB"
                for k in ks
            )
        )
    log(f"  per-tensor analysis {sw.seconds():.0f} s")
    sets = keep_sets(fp32)
    worst_t = sorted([t for t in tensors[best] if t["local_sqnr_db"] is not None], key=lambda t: t["local_sqnr_db"])[:5]
    sets["consumers of 5 worst tensors"] = sorted({c for t in worst_t for c in t["consumers"]})
    sets["all of the above"] = sorted({n for v in sets.values() for n in v})
    res["keep_sets"] = sets
    for label, names in sets.items():
        if names:
            quant("int8", best, keep=names, label=label)
    trt = [r for r in rows if r["form"] == "int8"]
    top = max(trt, key=lambda r: r["sqnr_db"])
    res["best_diagnostic"] = max([r for r in rows if r["form"].startswith("diag")], key=lambda r: r["sqnr_db"])
    return {
        "model": name,
        "params_M": params / 1e6,
        "activations": acts,
        "attention": attn,
        "timm_init_zero_branches": f"{zero_branches}/{n_blocks}",
        "fp32": fp32_info,
        "best_method": best,
        "rows": rows,
        **res,
        "best": top,
        "wall_s": t_model.seconds(),
        "worst_tensors": [
            {
                k: t[k]
                for k in (
                    "tensor",
                    "kind",
                    "scope",
                    "local_sqnr_db",
                    "accumulated_sqnr_db",
                    "ref_min",
                    "ref_max",
                    "crest_db",
                    "channel_spread",
                    "clipped_share",
                )
            }
            for t in worst_t
        ],
    }


def write(report: dict) -> None:
    from nfdeploy.artifacts import atomic_write_json, atomic_write_text
    from nfdeploy.render import markdown_table

    OUT.mkdir(parents=True, exist_ok=True)
    atomic_write_json(OUT / "int8_timm_study.json", report)
    md = [
        "# INT8 on timm NormFreeNets: where the TensorRT form loses signal (ONNX Runtime CPU, 1 thread)\n",
        f"Command: `{report['command']}`\n",
        report["setup"] + "\n",
        f"Load average at start {report['load_average_start']}, now {os.getloadavg()} on {os.cpu_count()} cores "
        "(another engineer's benchmarks shared the machine; timings are not benchmarks).\n",
        "## Per family\n",
    ]
    summary = []
    for d in report["models"].values():
        s = {
            "model": d["model"],
            "act": ",".join(d["activations"]),
            "gates": ",".join(d["attention"]) or "-",
            "fp32 distinct top-1": f"{d['fp32']['distinct_top1']}/{d['fp32']['eval_tiles']}",
        }
        for r in d["rows"]:
            if r["kept"] == "none":
                s[f"{r['form']} {r['method']}"] = f"{r['sqnr_db']:.1f} dB / {r['top1_agreement']:.1%} / {r['status']}"
        w = d["worst_blocks"][0]
        s["worst block"] = f"{w['block']} {w['sqnr_db']:.1f} dB"
        ks = [k for k in d["kinds"][d["best_method"]] if k["local_median_db"] is not None]
        lo = min(ks, key=lambda k: k["local_median_db"])
        s["lossiest kind (local median)"] = f"{lo['kind']} {lo['local_median_db']:.1f} dB"
        baseline = next(r for r in d["rows"] if r["form"] == "int8" and r["method"] == "minmax" and r["kept"] == "none")
        b = d["best"]
        s["best int8 fix"] = f"{b['method']}, kept: {b['kept']}"
        s["dB gained vs minmax"] = b["sqnr_db"] - baseline["sqnr_db"]
        s["best agreement / verdict"] = f"{b['top1_agreement']:.1%} / {b['status']}"
        bd = d.get("best_diagnostic")
        if bd:
            s["best diagnostic"] = (
                f"{bd['form']} {bd['method']}: {bd['sqnr_db']:.1f} dB / {bd['top1_agreement']:.1%} / {bd['status']}"
            )
        summary.append(s)
    md += [
        markdown_table(summary, floatfmt="{:.1f}"),
        "\nCells: logits SQNR vs the fp32 graph / top-1 agreement / int8 rule (agreement >= 99%; no labels, so no "
        "accuracy-drop check).\n",
    ]
    for d in report["models"].values():
        md += [
            f"## {d['model']}\n",
            f"{d['params_M']:.1f} M parameters; activations {d['activations']}; gates {d['attention'] or 'none'}; "
            f"timm's own init zeroes {d['timm_init_zero_branches']} residual branches; fp32 on the evaluation tiles: "
            f"{d['fp32']} ; wall {d['wall_s']:.0f} s.\n",
            markdown_table(
                d["rows"],
                ["form", "method", "kept", "kept_nodes", "sqnr_db", "top1_agreement", "status", "lint_ok", "seconds"],
                floatfmt="{:.3g}",
            ),
            "\n### Per block (SQNR dB vs fp32 graph)\n",
        ]
        brow = {}
        for m, rs in d["blocks"].items():
            for r in rs:
                brow.setdefault(r["block"], {"block": r["block"]})[m] = r["sqnr_db"]
        md += [
            markdown_table(list(brow.values()), floatfmt="{:.1f}"),
            f"\nLargest drops from one point to the next ({d['best_method']}): "
            + ", ".join(f"{x['block']} {x['drop_db']:.1f} dB" for x in d["largest_block_drops"])
            + "\n",
        ]
        for m, ks in d["kinds"].items():
            md += [
                f"\n### Per tensor kind ({m}; local = this quantizer's own noise, accumulated = vs fp32 graph)\n",
                markdown_table(ks, floatfmt="{:.3g}"),
            ]
        md += [
            "\n### Worst 5 quantized tensors by local SQNR\n",
            markdown_table(d["worst_tensors"], floatfmt="{:.3g}"),
            "\nKeep sets: " + "; ".join(f"{k}: {len(v)} nodes" for k, v in d["keep_sets"].items()) + "\n",
        ]
    md += ["\n## Log\n", "```", *report["log"], "```"]
    atomic_write_text(OUT / "int8_timm_study.md", "\n".join(md) + "\n")


def main() -> None:
    import json

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=DEFAULT_MODELS)
    ap.add_argument("--methods", default="minmax,percentile")
    args = ap.parse_args()
    import torch

    from nfdeploy.runtime.ort import ort_threads_limited

    torch.set_num_threads(1)
    prev = OUT / "int8_timm_study.json"
    report = json.loads(prev.read_text()) if prev.is_file() else {"models": {}, "log": []}
    report.update(
        command="OMP_NUM_THREADS=1 PYTHONPATH=$PWD/tests/torchvision_shim nice -n 19 python -m "
        "bench.int8_timm_study " + " ".join(sys.argv[1:]),
        setup=f"{SIZE}² input; randomize_timm_(seed=0); {len(photo_set(SIZE))} tiles (sklearn sample photos, "
        f"stride {SIZE // 2}, + horizontal flips), calibration on alternate tiles, evaluation on the other "
        f"half; per-tensor values on the first {ANALYSIS_TILES} evaluation tiles; reference = the fp32 "
        "ONNX graph on ONNX Runtime CPU. Percentile = 99.999 (quantize_graph's fixed value).",
        load_average_start=report.get("load_average_start", os.getloadavg()),
    )

    def log(msg: str) -> None:
        msg = time.strftime("%H:%M:%S ") + msg
        print(msg, flush=True)
        report["log"].append(msg)

    with tempfile.TemporaryDirectory(prefix="int8-timm-") as tmp, ort_threads_limited(1):
        for name in args.models.split(","):
            try:
                report["models"][name] = study(name, Path(tmp), args.methods.split(","), log)
            except Exception as e:  # keep what the others measured
                log(f"{name}: FAILED {type(e).__name__}: {e}")
                raise
            write(report)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
