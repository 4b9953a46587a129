"""From image files to an answer, the same everywhere (issue 25's evidence).

    python -m bench.image_input --out bench/results/image-input-digits-cpu-DATE [--epochs 12] [--run RUN_DIR]

1. A digits run (recipe nf_digits) exported twice with --image-input: the normalization folded into the first conv
   where exact (the default) and kept explicit in Python's order (--image-norm explicit).
2. Parity on the float tensors of the whole test split, every CPU backend (the per-backend logits kept).
3. The test split written out as PNG files (the model's 32 x 32 pixels, as the dataset holds them).
4. Agreement with parity's run on the float tensors: `nfdeploy predict` on the PNG files with every CPU backend
   (top-1 of the same backend; an image-input backend against its float graph), the uint8 graph in ONNX Runtime
   against the float graph (bitwise share, max ULP, max rel L2 per sample), and the served uint8 model (the
   bundled tritonserver, gRPC, one request per image).
5. Speed: a float32 and a uint8 model served side by side (two servers), one request at a time (concurrency 1),
   interleaved rounds with the uint8 ÷ float32 latency ratio and its 95% interval; the request payload bytes.

Writes OUT/image_input.json, OUT/image_input.md and OUT/parity-fold/ (the float-tensor parity run); the run, the
exports and the PNG files go to --work (default: a temporary dir, removed at the end).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from nfdeploy.artifacts import Manifest, atomic_write_json, atomic_write_text
from nfdeploy.check.backends import REFERENCE, export_backend
from nfdeploy.check.parity import ParityOptions, measure_parity
from nfdeploy.check.parity_render import write_parity_report
from nfdeploy.config import load_recipe
from nfdeploy.export import ExportOptions, export_run
from nfdeploy.machine import cpu_flags, machine_info, machine_load
from nfdeploy.metrics import compare_outputs, ulp_error
from nfdeploy.perf import Stopwatch
from nfdeploy.perf.call_timing import time_calls
from nfdeploy.perf.rounds import RoundPlan, describe_ratio
from nfdeploy.render import markdown_table
from nfdeploy.runtime.base import run_batched
from nfdeploy.serve.client import Client
from nfdeploy.serve.predict import PredictOptions, predict_images
from nfdeploy.serve.repository import PackageOptions
from nfdeploy.serve.server import ModelServer, ServeOptions
from nfdeploy.serve.tritonserver import ServerAddress, free_port
from nfdeploy.train import train

FLOAT, PIXELS = "onnxruntime-cpu-fp32", "onnxruntime-cpu-fp32-uint8"
MODEL = "nf_resnet_c8"  # the digits recipe's model, as the server names it


def float_twin(backend: str) -> str:
    """The backend whose float-tensor run an image-input backend is held to (its float graph, same runtime)."""
    return backend.removesuffix("-uint8")


def exports(args: argparse.Namespace, work: Path, log) -> dict[str, Path]:
    run = args.run or train(load_recipe("nf_digits", {"train.epochs": args.epochs}), work / "run", log=log).run_dir
    made = {}
    for norm in ("fold", "explicit"):
        opts = ExportOptions(precisions=("fp32", "fp16"), image_input=True, image_norm=norm)
        made[norm] = export_run(run, work / f"export-{norm}", opts, log=log).out_dir
    return made


def write_pngs(pixels: np.ndarray, folder: Path) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:04d}.png" for i in range(len(pixels))]
    for path, px in zip(paths, pixels):
        Image.fromarray(px[0] if px.shape[0] == 1 else px.transpose(1, 2, 0)).save(path)
    return paths


def predict_rows(export: Path, paths: list[Path], outputs: dict[str, np.ndarray], log) -> list[dict]:
    rows = []
    for name in sorted(n for n in outputs if n != REFERENCE):
        want = outputs[float_twin(name)].argmax(1)
        opts = PredictOptions(backend=name, top=1, batch=64, allow_unchecked=True)
        got = np.array([int(p.top[0][0]) for p in predict_images(export, paths, opts, log=log).predictions])
        rows.append({"backend": name, "images": len(paths), "predict vs parity top-1": float((got == want).mean()),
                     "held to": float_twin(name)})  # fmt: skip
        share = rows[-1]["predict vs parity top-1"]
        log(f"  predict {name}: top-1 equal to parity's {float_twin(name)} on {share:.1%}")
    return rows


def graph_rows(made: dict[str, Path], x: np.ndarray, pixels: np.ndarray) -> list[dict]:
    """ONNX Runtime fp32: the uint8 graph on pixels vs the float graph on their normalised inputs."""
    rows = []
    for norm, export in made.items():
        with export_backend(export, FLOAT) as f, export_backend(export, PIXELS) as u:
            a, b = run_batched(f, x), run_batched(u, pixels)
        per = [compare_outputs(b[i : i + 1], a[i : i + 1])["rel_l2"] for i in range(len(a))]
        rows.append({"normalization": norm, "images": len(a), "bitwise share": float(np.all(a == b, axis=1).mean()),
                     "max ULP": float(ulp_error(b, a, torch.float32).max()), "max rel L2": float(max(per)),
                     "top-1 equal": float((a.argmax(1) == b.argmax(1)).mean())})  # fmt: skip
    return rows


def server(export: Path, backend: str, log) -> ModelServer:
    address = ServerAddress("127.0.0.1", free_port(), free_port(), free_port())
    package = PackageOptions(backend=backend, max_batch=8, allow_unchecked=True)
    return ModelServer(export, ServeOptions(package=package, address=address), log=log)


def served_row(export: Path, pixels: np.ndarray, outputs: dict[str, np.ndarray], log) -> dict:
    with server(export, PIXELS, log) as s:
        client = Client(s.urls["grpc"], MODEL, "input", "logits")
        got = np.concatenate([client.infer(pixels[i : i + 1], 30.0, "UINT8")[0] for i in range(len(pixels))])
        client.close()
    return {"served": PIXELS, "images": len(pixels), "top-1 vs parity's " + FLOAT: float(
        (got.argmax(1) == outputs[FLOAT].argmax(1)).mean()), "bitwise vs " + PIXELS + " in process": float(
        np.all(got == outputs[PIXELS], axis=1).mean())}  # fmt: skip


def speed(export: Path, x: np.ndarray, pixels: np.ndarray, seconds: float, log, model: str = MODEL) -> dict:
    with server(export, FLOAT, log) as sf, server(export, PIXELS, log) as su:
        cf = Client(sf.urls["grpc"], model, "input", "logits")
        cu = Client(su.urls["grpc"], model, "input", "logits")
        calls = {"float32": lambda: cf.infer(x[:1], 30.0, "FP32"), "uint8": lambda: cu.infer(pixels[:1], 30.0, "UINT8")}
        plan = RoundPlan(warmup_s=1.0, min_time_s=seconds, min_iters=50)
        members, ratios, info = time_calls(calls, plan, ratios={"uint8/float32": ("uint8", "float32")})
        cf.close(), cu.close()
    return {"request_bytes": {"float32": int(x[:1].nbytes), "uint8": int(pixels[:1].nbytes)},
            "median_ms": {k: m["median_ms"] for k, m in members.items()},
            "median_ci95_ms": {k: m["median_ci95_ms"] for k, m in members.items()},
            "ratio": ratios["uint8/float32"], "rounds": info}  # fmt: skip


def r50_speed(work: Path, seconds: float, log) -> dict:
    """The same side-by-side speed on nf_resnet50 at 224² (random weights, ImageNet's normalization recorded), where
    a request is 3 x 224 x 224 values: 602 kB in float32, 150 kB in uint8."""
    from nfdeploy.export.study_inputs import IMAGENET_MEAN, IMAGENET_STD
    from nfdeploy.train.random_run import write_random_run

    run = write_random_run(work / "r50-run", normalization=(IMAGENET_MEAN, IMAGENET_STD))
    opts = ExportOptions(precisions=("fp32",), image_input=True, check=False)
    export = export_run(run, work / "r50-export", opts, log=log).out_dir
    prep = Manifest.read(export, verify_files=False).input.image_preprocessing
    pixels = np.random.default_rng(0).integers(0, 256, (1, 3, 224, 224), dtype=np.uint8)
    return speed(export, prep.normalize(pixels).numpy(), pixels, seconds, log, model="nf_resnet50")


def markdown(report: dict) -> str:
    lines = []
    for label, sp in (
        ("digits, 1 x 32 x 32", report["speed"]),
        ("nf_resnet50, 3 x 224 x 224", report.get("speed_r50")),
    ):
        if sp is None:
            continue
        lines += [
            f"- {label}: request payload float32 {sp['request_bytes']['float32']} B, uint8 "
            f"{sp['request_bytes']['uint8']} B; median latency float32 {sp['median_ms']['float32']:.3f} ms, uint8 "
            f"{sp['median_ms']['uint8']:.3f} ms; uint8 ÷ float32 {describe_ratio(sp['ratio'])}"
        ]
    return "\n".join([
        "# From image files to an answer: the same everywhere", "",
        f"Command: `{report['command']}`. Digits run, {report['epochs']} epochs (test accuracy "
        f"{report['accuracy']}); {report['images']} test images as PNG files. CPU: {report['cpu']} "
        f"({report['cpu_flags']}), {report['machine']['cpu']['usable_cpus']} cores.", "",
        "## predict on the PNG files vs parity's run on the float tensors (same backend)", "",
        markdown_table(report["predict"], floatfmt="{:.4g}"), "",
        "## The uint8 graph vs the float graph (ONNX Runtime CPU fp32)", "",
        markdown_table(report["graphs"], floatfmt="{:.3g}"), "",
        "## The served uint8 model (bundled tritonserver, gRPC, one request per image)", "",
        markdown_table([report["served"]], floatfmt="{:.4g}"), "",
        "## Served uint8 vs float32 model, concurrency 1 (two servers, interleaved rounds)", "",
        *lines, "", f"Load average before {report['load_before']}, after {report['load_after']}.", "",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--run", type=Path, default=None, help="A digits run dir to use instead of training one.")
    ap.add_argument("--speed-seconds", type=float, default=5.0, help="Timed seconds per member of the speed rounds.")
    ap.add_argument("--r50", action="store_true", help="Also the speed comparison on nf_resnet50 at 224x224.")
    ap.add_argument("--work", type=Path, default=None, help="Where the run, exports and PNGs go (default: a temp dir).")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="image-input-") as tmp:
        return study(args, args.work or Path(tmp), argv)


def study(args: argparse.Namespace, work: Path, argv: list[str] | None) -> int:
    log = print
    sw = Stopwatch()
    load_before = machine_load()
    made = exports(args, work, log)
    measured = measure_parity(made["fold"], ParityOptions(max_samples=100_000, only=("cpu",)), log=log)
    write_parity_report(measured.result, args.out / "parity-fold")
    data = measured.reference  # the images parity judged: normalised (x) and the pixels they came from
    paths = write_pngs(data.pixels, work / "png")
    report = {
        "command": "python -m bench.image_input " + " ".join(sys.argv[1:] if argv is None else argv),
        "epochs": args.epochs, "images": len(paths), "cpu": machine_info()["cpu"]["model"],
        "cpu_flags": " ".join(cpu_flags(("avx512_bf16", "avx512_vnni", "amx", "avx2"))),
        "accuracy": f"{measured.result.row(REFERENCE).accuracy:.2%}",
        "predict": predict_rows(made["fold"], paths, measured.outputs, log),
        "graphs": graph_rows(made, data.x, data.pixels),
        "served": served_row(made["fold"], data.pixels, measured.outputs, log),
        "speed": speed(made["fold"], data.x, data.pixels, args.speed_seconds, log),
        "speed_r50": r50_speed(work, args.speed_seconds, log) if args.r50 else None,
        "load_before": load_before["loadavg_1_5_15"], "load_after": machine_load()["loadavg_1_5_15"],
        "machine": machine_info(), "wall_seconds": sw.seconds(),
    }  # fmt: skip
    atomic_write_json(args.out / "image_input.json", report)
    atomic_write_text(args.out / "image_input.md", markdown(report))
    log(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
