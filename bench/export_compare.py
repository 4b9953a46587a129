"""Folded nfdeploy ONNX vs plain `torch.onnx.export` (dynamo) of the unfolded model, side by side.

Rows: the digits-trained run (nf_resnet_c8), nfdeploy's nf_resnet50 (randomised gains), timm's
nf_resnet50 and dm_nfnet_f0 (randomised gains; timm's init zeroes the skip gains, which would make
parity vacuous). Per row: ONNX node count and op histogram, export seconds, ONNX Runtime CPU parity
against the float64 unfolded PyTorch model (relative L2, top-1 agreement) and ORT CPU latency at
batch 1 (host wall time; the two graphs of a model in interleaved rounds).

    python -m bench.export_compare [--run RUN_DIR] [--size 224] [--timm nf_resnet50,dm_nfnet_f0]

On this project's CPU machines timm only imports with the test shim:
    PYTHONPATH=tests/torchvision_shim python -m bench.export_compare
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import date
from pathlib import Path

import numpy as np
import onnx
import torch

from nfdeploy.artifacts import ModelSource
from nfdeploy.export import ExportOptions, ModelToExport, export_model
from nfdeploy.export.plain_export import plain_onnx_export
from nfdeploy.fold import fold_model, randomize_
from nfdeploy.metrics import compare_outputs
from nfdeploy.models import create_model
from nfdeploy.perf import RoundPlan, time_group
from nfdeploy.render import markdown_table, write_bench_result
from nfdeploy.runtime.base import BackendSpec
from nfdeploy.runtime.ort import OrtBackend

quiet = lambda *a, **k: None  # noqa: E731
FOLDED, PLAIN = "nfdeploy folded", "plain torch.onnx.export"
LATENCY_PLAN = RoundPlan(warmup_s=1.0, min_time_s=3.0, min_iters=5)


def _ort(path: Path, shape: tuple[int, ...]) -> OrtBackend:
    return OrtBackend(BackendSpec("onnxruntime", "cpu", "fp32"), shape, path, threads=torch.get_num_threads())


def ort_latency_ms(paths: dict[str, Path], shape: tuple[int, ...]) -> dict[str, float]:
    """{label: ONNX Runtime CPU ms at batch 1} of the graphs `paths`, timed side by side in interleaved rounds."""
    backends = {k: _ort(p, shape).activate() for k, p in paths.items()}
    try:
        rows, _, _ = time_group(backends, 1, shape, LATENCY_PLAN)
    finally:
        for b in backends.values():
            b.deactivate()
    return {k: r["median_ms"] for k, r in rows.items()}


def parity(path: Path, ref: torch.Tensor, x: np.ndarray) -> dict:
    with _ort(path, tuple(x.shape[1:])) as b:
        out = torch.from_numpy(b.run(x))
    r = compare_outputs(ref, out)
    return {"rel_l2": r["rel_l2"], "top1_agreement": float((out.argmax(1) == ref.argmax(1)).double().mean())}


def top_ops(ops: dict, k: int = 6) -> str:
    return ", ".join(f"{o} {n}" for o, n in sorted(ops.items(), key=lambda t: -t[1])[:k])


def bench_one(
    label: str, model: torch.nn.Module, fold, shape, x: np.ndarray, tmp: Path, norm: str = "nf"
) -> list[dict]:
    model = model.double().eval()
    with torch.no_grad():
        ref = model(torch.from_numpy(x).double())
    subject = ModelToExport(
        model, fold=fold, name=label, input_shape=shape, norm=norm, source=ModelSource(kind="bench")
    )
    res = export_model(subject, tmp / label, ExportOptions(precisions=("fp32",), check=False), log=quiet)
    e = res.manifest.onnx["fp32"]
    paths = {FOLDED: tmp / label / e.file, PLAIN: tmp / f"{label}-plain.onnx"}
    p = plain_onnx_export(model, paths[PLAIN], shape)
    latency = ort_latency_ms(paths, shape)
    rows = [
        {
            "model": label,
            "variant": FOLDED,
            "nodes": e.nodes,
            "top ops": top_ops(e.ops),
            "export_s": e.details["export_seconds"] + e.details["fold_seconds"],
            **parity(paths[FOLDED], ref, x),
            "ort_cpu_ms_b1": latency[FOLDED],
        },
        {
            "model": label,
            "variant": PLAIN,
            "nodes": p["nodes"],
            "top ops": top_ops(p["ops"]),
            "export_s": p["export_seconds"],
            **parity(paths[PLAIN], ref, x),
            "ort_cpu_ms_b1": latency[PLAIN],
        },
    ]
    print(markdown_table(rows, floatfmt="{:.3g}"), flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, help="a digits run dir (default: train nf_digits for 30 epochs first)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--timm", default="nf_resnet50,dm_nfnet_f0")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        run = args.run
        if run is None:
            from nfdeploy.config import load_recipe
            from nfdeploy.train import train

            run = train(load_recipe("nf_digits"), tmp / "digits-run", progress=False, log=quiet).run_dir
        from nfdeploy.artifacts.run_dir import load_run_model

        digits, _ = load_run_model(run)
        c = digits.cfg
        x = (
            np.random.default_rng(1)
            .standard_normal((args.samples, c.in_chans, c.input_size, c.input_size))
            .astype(np.float32)
        )
        rows += bench_one(
            "digits nf_resnet_c8 (trained)",
            digits,
            lambda dt: fold_model(digits, dtype=dt),
            (c.in_chans, c.input_size, c.input_size),
            x,
            tmp,
        )
        shape = (3, args.size, args.size)
        x = np.random.default_rng(2).standard_normal((args.samples, *shape)).astype(np.float32)
        r50 = randomize_(create_model("nf_resnet50"), seed=0)
        rows += bench_one("nfdeploy nf_resnet50 (randomised)", r50, lambda dt: fold_model(r50, dtype=dt), shape, x, tmp)
        if args.timm:
            from nfdeploy.interop.timm import create_timm_model, fold_timm_model, randomize_timm_

            for name in args.timm.split(","):
                m = randomize_timm_(create_timm_model(name), seed=0)
                rows += bench_one(
                    f"timm {name} (randomised)",
                    m,
                    lambda dt, m=m: fold_timm_model(m, input_size=(args.size, args.size), dtype=dt),
                    shape,
                    x,
                    tmp,
                )
    meta = {
        "date": date.today().isoformat(),
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "input": f"batch x 3 x {args.size} x {args.size} (digits: 1x32x32)",
        "parity": f"ONNX Runtime CPU EP vs float64 unfolded PyTorch, {args.samples} N(0,1) inputs",
        "latency": "ONNX Runtime CPU EP, batch 1, host wall time; the folded and the plain graph in interleaved "
        "rounds after 1 s warm-up, median of per-round medians (nfdeploy.perf.time_group)",
        "opset": "18 (20 for GELU models: native Gelu)",
    }
    md = (
        f"# Folded nfdeploy export vs plain torch.onnx.export ({meta['date']}, CPU)\n\n"
        f"torch {meta['torch']}, onnx {meta['onnx']}, {meta['threads']} threads, opset {meta['opset']}, dynamic batch. "
        f"Parity: {meta['parity']}. Latency: {meta['latency']}.\n\n"
        + markdown_table(rows, floatfmt="{:.3g}")
        + "\n`python -m bench.export_compare`\n"
    )
    write_bench_result(args.out, f"export_compare-cpu-{meta['date']}", meta, rows, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
