"""TensorRT(-RTX) build figures for nf_resnet50 at 224x224, fp32 and fp16: nfdeploy's folded NF vs its
folded BN twin vs timm's nf_resnet50 exported by plain `torch.onnx.export` (dynamo, unfolded).

Per row: parsed network layers (`network.num_layers`, before the builder fuses anything), build
seconds, engine bytes. With TensorRT-RTX and no GPU this is an ahead-of-time build for the target
compute capabilities recorded in the JSON (kernels compile on first run on the GPU).

    PYTHONPATH=tests/torchvision_shim python -m bench.trt_build     # the shim: timm on this CPU machine
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import date
from pathlib import Path

import torch

from nfdeploy.export.engine_build import BatchProfile, TrtBuildOptions, build_engine
from nfdeploy.export.onnx_graph import export_module
from nfdeploy.export.plain_export import plain_onnx_export
from nfdeploy.fold import fold_model, randomize_
from nfdeploy.models import create_model
from nfdeploy.render import markdown_table, write_bench_result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--flavour", default="auto")
    ap.add_argument("--no-timm", action="store_true")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)
    shape = (3, args.size, args.size)
    opts = TrtBuildOptions(flavour=args.flavour, profiles=(BatchProfile(1, 8, 32),))
    rows, records = [], {}
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        sources = {
            "nfdeploy nf_resnet50 (folded NF)": ("nf", "nf_resnet50"),
            "nfdeploy bn_resnet50 (folded BN twin)": ("nf", "bn_resnet50"),
        }
        if not args.no_timm:
            sources["timm nf_resnet50 (plain export)"] = ("timm", "nf_resnet50")
        for label, (kind, name) in sources.items():
            for prec, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
                onnx_path = tmp / f"{name}-{kind}-{prec}.onnx"
                if kind == "nf":
                    net, _ = fold_model(randomize_(create_model(name), seed=0).eval(), dtype=dtype)
                    export_module(net, onnx_path, shape, io_dtype=torch.float32)
                else:
                    from nfdeploy.interop.timm import create_timm_model, randomize_timm_

                    plain_onnx_export(randomize_timm_(create_timm_model(name), seed=0), onnx_path, shape, dtype)
                rec = build_engine(onnx_path, tmp / f"{name}-{kind}-{prec}.engine", prec, shape, opts)
                records[f"{label} {prec}"] = rec
                rows.append(
                    {
                        "model": label,
                        "precision": prec,
                        "onnx_nodes": _nodes(onnx_path),
                        "network_layers": rec["network_layers"],
                        "build_s": rec["build_seconds"],
                        "engine_MiB": rec["engine_bytes"] / 2**20,
                    }
                )
                print(markdown_table(rows[-1:], floatfmt="{:.3g}"), flush=True)
    any_rec = next(iter(records.values()))
    meta = {
        "date": date.today().isoformat(),
        "flavour": any_rec["flavour"],
        "version": any_rec["version"],
        "built_without_gpu": any_rec["built_without_gpu"],
        "gpu": any_rec["gpu"],
        "compute_capabilities": any_rec["compute_capabilities"],
        "input": f"batch x 3 x {args.size} x {args.size}",
        "profiles": "1:8:32",
        "machine": "2 CPU cores, no GPU" if any_rec["built_without_gpu"] else any_rec["gpu"],
    }
    md = (
        f"# TensorRT build: nf_resnet50 folded NF vs folded BN twin vs timm plain export ({meta['date']})\n\n"
        f"{meta['flavour']} {meta['version']} on {meta['machine']}; "
        f"targets {', '.join(meta['compute_capabilities'] or [])}; "
        f"input {meta['input']}, profile {meta['profiles']}, strongly typed (fp16 = the fp16 ONNX variant). "
        "network_layers = parsed network before fusion.\n\n"
        + markdown_table(rows, floatfmt="{:.3g}")
        + "\n`PYTHONPATH=tests/torchvision_shim python -m bench.trt_build`\n"
    )
    write_bench_result(
        args.out, f"trt_build-{'cpu' if meta['built_without_gpu'] else 'gpu'}-{meta['date']}", meta, rows, md
    )
    return 0


def _nodes(path: Path) -> int:
    import onnx

    return len(onnx.load(str(path)).graph.node)


if __name__ == "__main__":
    sys.exit(main())
