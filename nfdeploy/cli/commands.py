"""The `nfdeploy` commands: a thin typer layer; every command calls library functions. Options that several commands
take are defined once, in option_groups."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Annotated

import typer

from nfdeploy.cli.option_groups import (
    AllowUnchecked,
    Batches,
    BatchInvariant,
    CalibDir,
    Calibration,
    CalibSamples,
    CalibSeed,
    Check,
    ComputeCapability,
    DataPath,
    Dataset,
    ExportDir,
    ImageInput,
    ImageNorm,
    InputSize,
    Instances,
    InstanceThreads,
    Int8Keep,
    Int8OrtWeightBits,
    IoDtype,
    MaxBatch,
    MaxQueueDelayUs,
    MaxQueueSize,
    MaxTime,
    MinTime,
    Only,
    Opset,
    OptLevel,
    Precision,
    Profile,
    QueueTimeoutUs,
    ReportDir,
    ServedBackend,
    Tf32,
    Threads,
    TimingCache,
    TrtFlavour,
    Warmup,
    package_options,
    serve_flags,
    serving_values,
    show_flags_as_flags,
    trt_overrides,
)
from nfdeploy.errors import UserError, one_line

show_flags_as_flags()
app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train NF-ResNets, fold them into static weights, export and prove parity.",
)


class CliError(UserError, ValueError):
    """A bad command-line value: reported like every user error, on one line."""


def friendly(fn):
    """Known user errors → one line on stderr and exit code 2, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            typer.echo(f"error: {one_line(e, 2000, with_type=False)}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper


@app.command()
@friendly
def train(
    recipe: str = typer.Argument(
        "nf_digits", help="Recipe name (bundled, see nfdeploy models; or ./models/NAME.toml) or a .toml path."
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run dir (default runs/MODEL-DATASET-TIME)."),
    model: str | None = typer.Option(None, help="Override model.name."),
    dataset: Dataset = None,
    data_path: DataPath = None,
    epochs: int | None = typer.Option(None, help="Override train.epochs."),
    batch_size: int | None = typer.Option(None, help="Override train.batch_size (global batch)."),
    lr: float | None = typer.Option(None, help="Override train.lr."),
    seed: int | None = typer.Option(None, help="Override train.seed."),
    set_: list[str] = typer.Option([], "--set", help="Override any recipe key: section.key=value (TOML value)."),
    resume: Path | None = typer.Option(None, help="Continue the interrupted run in this run dir."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
):
    """Train a recipe; prints the run dir."""
    from nfdeploy.config import load_recipe
    from nfdeploy.train import resume_training
    from nfdeploy.train import train as train_recipe

    if resume is not None:
        result = resume_training(resume, progress=progress)
    else:
        flags = {
            "model.name": model,
            "data.dataset": dataset,
            "data.path": data_path,
            "train.epochs": epochs,
            "train.batch_size": batch_size,
            "train.lr": lr,
            "train.seed": seed,
        }
        from nfdeploy.config import parse_override

        overrides = dict(parse_override(s) for s in set_)
        overrides.update({k: v for k, v in flags.items() if v is not None})
        result = train_recipe(load_recipe(recipe, overrides), out, progress=progress)
    s = result.summary
    typer.echo(f"test accuracy {s['test_accuracy']:.2%}, {s['images_per_second']:.0f} img/s")
    typer.echo(f"run dir: {result.run_dir}")


@app.command()
@friendly
def spp(
    model: str = typer.Argument(..., help="NF model name (its BN twin is measured too)."),
    out: Path = typer.Option(Path("spp"), "--out", "-o", help="Output directory for spp.csv and spp.png."),
    batch: int = typer.Option(8, help="Batch of N(0,1) inputs."),
    input_size: int | None = typer.Option(None, help="Input size (default: the config's)."),
    skip_gain: float = typer.Option(1.0, help="Value given to NF skip gains (0 at init makes blocks identities)."),
    downsample: str | None = typer.Option(None, help="Shortcut downsampling: avg (default) or stride."),
    seed: int = typer.Option(0),
):
    """Signal propagation at init: per block average channel squared mean and variance."""
    from nfdeploy.models import list_models
    from nfdeploy.models.spp import spp_report

    if model not in list_models() or not model.startswith("nf_"):
        raise CliError(
            f"unknown NF model {model!r}; known: {', '.join(m for m in list_models() if m.startswith('nf_'))}"
        )
    if downsample not in (None, "avg", "stride"):
        raise CliError(f"--downsample must be avg or stride, got {downsample!r}")
    extra = {"downsample": downsample} if downsample else {}
    rep = spp_report(model, out, batch=batch, input_size=input_size, skip_gain=skip_gain, seed=seed, **extra)
    nf = [r for r in rep["rows"] if r["model"] == model]
    worst = max(abs(r["avg_var"] / r["expected_var"] - 1) for r in nf)
    typer.echo(f"{model}: {len(nf)} blocks, worst |measured/analytic - 1| variance = {worst:.1%}")
    typer.echo(f"wrote {rep['csv']} and {rep['png']}")


@app.command()
@friendly
def export(
    run_dir: Path | None = typer.Argument(None, help="Training run dir (weights.safetensors + config.json)."),
    out: Path = typer.Option(..., "--out", "-o", help="Export dir (replaced atomically if it holds an export)."),
    timm: str | None = typer.Option(None, "--timm", help="Export one of timm's NormFreeNet models instead."),
    checkpoint: Path | None = typer.Option(None, help="Weights for --timm (.safetensors; .pth via weights_only)."),
    preset: str = typer.Option("default", help="Export preset: a bundled name (nfdeploy/presets) or a .toml path."),
    precision: Precision = None,
    opset: Opset = None,
    io_dtype: IoDtype = None,
    input_size: InputSize = None,
    check: Check = None,
    image_input: ImageInput = False,
    image_norm: ImageNorm = None,
    trt: bool = typer.Option(
        False, "--trt", help="Also build one TensorRT engine per precision.", rich_help_panel="TensorRT"
    ),
    trt_flavour: TrtFlavour = None,
    profile: Profile = None,
    tf32: Tf32 = None,
    opt_level: OptLevel = None,
    timing_cache: TimingCache = None,
    compute_capability: ComputeCapability = None,
    calibration: Calibration = None,
    calib_samples: CalibSamples = None,
    calib_seed: CalibSeed = None,
    calib_dir: CalibDir = None,
    int8_keep: Int8Keep = None,
    int8_ort_weight_bits: Int8OrtWeightBits = None,
):
    """Fold a trained run (or a timm NFNet) into static weights; export ONNX (+ TensorRT engines) + manifest."""
    from nfdeploy.export import Int8Overrides, OnnxOverrides, export_options, export_run, export_timm

    if (run_dir is None) == (timm is None):
        raise CliError("give either RUN_DIR or --timm NAME")
    opts = export_options(
        preset,
        OnnxOverrides(
            precisions=_split(precision),
            opset=opset,
            io_dtype=io_dtype,
            check=check,
            input_size=input_size,
            image_input=image_input or None,
            image_norm=image_norm,
        ),
        Int8Overrides(
            calibration=calibration,
            calib_samples=calib_samples,
            calib_seed=calib_seed,
            calib_dir=calib_dir,
            keep=tuple(int8_keep or ()),
            ort_weight_bits=int8_ort_weight_bits,
        ),
        trt_overrides(trt_flavour, profile, tf32, opt_level, timing_cache, compute_capability),
        engines=trt,
    )
    res = export_timm(timm, out, checkpoint, opts) if timm is not None else export_run(run_dir, out, opts)
    totals = res.manifest.fold["totals"]
    typer.echo(
        f"folded {totals['weight_standardizations']} WS convs, {totals['scalars_folded']} scalars, "
        f"{totals['batchnorms_folded']} BNs; {totals['explicit']} explicit ops left"
    )
    typer.echo(f"export dir: {res.out_dir}")


def _split(text: str | None) -> list[str] | None:
    return None if text is None else [p.strip() for p in text.split(",") if p.strip()]


@app.command()
@friendly
def engine(
    onnx_file: Path = typer.Argument(..., help="ONNX file to build."),
    out: Path = typer.Option(..., "--out", "-o", help="Engine file to write (atomically)."),
    precision: str = typer.Option("fp32", help="Precision of the ONNX graph: fp32, fp16 or bf16 (strongly typed)."),
    profile: Profile = None,
    trt_flavour: TrtFlavour = None,
    tf32: Tf32 = None,
    opt_level: OptLevel = None,
    timing_cache: TimingCache = None,
    compute_capability: ComputeCapability = None,
):
    """Build one TensorRT engine from an ONNX file; parser errors are listed one per line."""
    import json

    from nfdeploy.export import trt_options
    from nfdeploy.export.engine_build import EngineBuildError, build_engine
    from nfdeploy.export.onnx_graph import read_input_shape

    opts = trt_options(None, trt_overrides(trt_flavour, profile, tf32, opt_level, timing_cache, compute_capability))
    try:
        rec = build_engine(onnx_file, out, precision, read_input_shape(onnx_file), opts)
    except ValueError as e:
        raise CliError(str(e)) from None
    except EngineBuildError as e:
        typer.echo(f"error: {e}", err=True)
        for x in e.errors:
            typer.echo(f"  node {x.get('node') or '?'} ({x.get('op') or '?'}): {x.get('message')}", err=True)
        raise typer.Exit(2) from None
    typer.echo(
        json.dumps(
            {
                k: rec[k]
                for k in (
                    "flavour",
                    "version",
                    "precision",
                    "network_layers",
                    "engine_bytes",
                    "build_seconds",
                    "engine_sha256",
                )
            },
            indent=1,
        )
    )
    typer.echo(f"engine: {out}")


@app.command()
@friendly
def inspect(
    engine_file: Path = typer.Argument(..., help="A TensorRT engine (its export dir's manifest is read if present)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Per-layer JSON (default ENGINE.layers.json)."),
):
    """Build record of an engine; on a GPU also the engine inspector's per-layer JSON and fused layer count."""
    import json

    from nfdeploy.artifacts import MANIFEST, Manifest
    from nfdeploy.export.engine_build import inspect_engine

    record = None
    if (engine_file.parent / MANIFEST).is_file():
        engines = Manifest.read(engine_file.parent, verify_files=False).engines.values()
        record = next((e.to_dict() for e in engines if e.file == engine_file.name), None)
    try:
        info = inspect_engine(engine_file, record, out_json=out or engine_file.with_suffix(".layers.json"))
    except FileNotFoundError as e:
        raise CliError(str(e)) from None
    typer.echo(json.dumps(info, indent=1))


@app.command()
@friendly
def backends(
    export_dir: ExportDir,
    as_json: bool = typer.Option(False, "--json", help="JSON instead of a table."),
):
    """Every backend the export could run on: name, device, precision, math mode, tolerance, availability."""
    import json

    from nfdeploy.check.backends import describe_backends, export_backends, load_export_source
    from nfdeploy.precision import describe_tolerance
    from nfdeploy.render import markdown_table

    rows = describe_backends(export_backends(load_export_source(export_dir)))
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    table = [
        {
            "name": r["name"],
            "device": r["device"],
            "precision": r["precision"],
            "math mode": r["math_mode"],
            "tolerance": describe_tolerance(r["tolerance"]),
            "available": "yes" if r["status"] == "available" else f"no: {r['reason']}",
        }
        for r in rows
    ]
    typer.echo(markdown_table(table))


@app.command()
@friendly
def parity(
    export_dir: ExportDir,
    out: ReportDir = None,
    dataset: Dataset = None,
    data_path: DataPath = None,
    only: Only = None,
    max_samples: int = typer.Option(512, help="Test images used."),
    per_block: bool = typer.Option(False, "--per-block", help="Error at every block; the first diverging block."),
    batch_matrix: bool = typer.Option(
        False, "--batch-matrix", help="Batch sizes 1..64 vs batch 1, beside the BN twin."
    ),
    save_outputs: bool = typer.Option(
        False, "--save-outputs", help="Save outputs + provenance for `nfdeploy compare`."
    ),
    threads: Threads = None,
    isa: str | None = typer.Option(
        None,
        "--isa",
        help="Run in a child process with the CPU libraries capped at this "
        "instruction set (sse41, avx, avx2, avx512_core, ...; recorded in the reports).",
    ),
):
    """Every backend vs the float64 unfolded model: errors, agreement, batch invariance; exits 1 on a failure."""
    from nfdeploy.check.parity import PARITY_JSON, PARITY_MD, PARITY_PNG, ParityOptions, parity_report

    options = ParityOptions(
        dataset=dataset,
        data_path=data_path,
        only=tuple(only or ()),
        max_samples=max_samples,
        per_block=per_block,
        batch_matrix=batch_matrix,
        save_outputs=save_outputs,
        threads=threads,
    )
    if isa is not None:
        from nfdeploy.check.isa import check_isa, run_parity_under_isa

        raise typer.Exit(run_parity_under_isa(check_isa(isa), export_dir, out, options))
    rep = parity_report(export_dir, out, options)
    where = Path(rep.out_dir)
    typer.echo(f"reports: {where / PARITY_MD} {where / PARITY_JSON} {where / PARITY_PNG}")
    if not rep.ok:
        typer.echo(f"error: parity failed — {rep.failure}", err=True)
        raise typer.Exit(1)


@app.command()
@friendly
def compare(
    a: Path = typer.Argument(..., help="A parity report dir written with --save-outputs."),
    b: Path = typer.Argument(..., help="Another one (another machine, thread count or GPU)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Where compare.json/.md go (default: B)."),
):
    """Compare two saved parity runs of one export on the same inputs: bitwise share, max ULP, rel L2, top-1."""
    from nfdeploy.check.saved_outputs import compare_saved_runs

    rep = compare_saved_runs(a, b, out or b)
    typer.echo(f"instruction set: A {rep['machine_a']['isa']}; B {rep['machine_b']['isa']}")
    for r in rep["same_backend"]:
        typer.echo(
            f"{r['backend']}: {r['bitwise_share']:.0%} samples bitwise identical, max ULP {r['max_ulp']:.3g}, "
            f"rel L2 {r['rel_l2']:.3g}, top-1 agreement {r['top1_agreement']:.2%}"
        )
    typer.echo(f"reports: {Path(out or b) / 'compare.md'} {Path(out or b) / 'compare.json'}")


@app.command()
@friendly
def bench(
    export_dir: ExportDir,
    out: ReportDir = None,
    batch: Batches = "1,8,32",
    only: Only = None,
    min_time: MinTime = 2.0,
    warmup: Warmup = 1.0,
    against: Path | None = typer.Option(
        None,
        "--against",
        help="Another export dir: time both side by side, report EXPORT_DIR / AGAINST per backend with a 95% interval.",
    ),
    max_time: MaxTime = None,
    threads: Threads = None,
    compile: bool = typer.Option(True, "--compile/--no-compile", help="Time the torch.compile backends (CUDA)."),
):
    """Latency and throughput per backend and batch; unfolded NF vs folded NF vs folded BN twin side by side."""
    # torch's OpenMP threads spin after a parallel region (libgomp's default) and starve the next member of a
    # round; libgomp reads this once, when torch loads, which in this process is the import below.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from nfdeploy.perf import BenchOptions, bench_against, bench_report, parse_batches

    options = BenchOptions(
        batches=parse_batches(batch),
        only=tuple(only or ()) or None,
        min_time=min_time,
        warmup=warmup,
        max_time=max_time,
        threads=threads,
        # --against has always timed torch without torch.compile (bench_against's default), whatever --compile says
        compile=compile and against is None,
    )
    if against is not None:
        rep = bench_against(export_dir, against, out, options)
        typer.echo(f"reports: {Path(rep.out_dir) / 'against.md'} {Path(rep.out_dir) / 'against.json'}")
        return
    rep = bench_report(export_dir, out, options)
    where = Path(rep.out_dir)
    typer.echo(f"reports: {where / 'bench.md'} {where / 'bench.json'} {where / 'latency_vs_batch.png'}")


@app.command()
@friendly
def pipeline(
    recipe: str = typer.Argument("nf_digits", help="Recipe name or path."),
    out: Path = typer.Option(Path("runs/pipeline"), "--out", "-o", help="Root dir: run/, export/, reports/."),
    epochs: int | None = typer.Option(None, help="Override train.epochs."),
    trt: bool | None = typer.Option(
        None, "--trt/--no-trt", help="Build TensorRT engines (default: when a flavour is installed)."
    ),
    batch: Batches = "1,8,32",
    min_time: MinTime = 1.0,
    progress: bool = typer.Option(True, help="Show a progress bar while training."),
):
    """The whole pipeline: train → export (ONNX; TensorRT engine when installed) → parity → bench."""
    from nfdeploy.workflow import run_pipeline

    res = run_pipeline(
        recipe,
        out,
        overrides={"train.epochs": epochs} if epochs is not None else None,
        trt=trt,
        batches=batch,
        min_time=min_time,
        progress=progress,
        log=typer.echo,
    )
    typer.echo(f"run dir:    {res.run_dir}")
    typer.echo(f"export dir: {res.export_dir}")
    typer.echo(f"reports:    {res.reports_dir} (parity.md, bench.md, *.png)")
    if not res.ok:
        typer.echo(f"error: parity failed — {res.parity.failure}", err=True)
        raise typer.Exit(1)


@app.command("models")
def list_models_cmd():
    """List the named model configs and the bundled training recipes."""
    from nfdeploy.config import list_recipes
    from nfdeploy.models import get_config, list_models

    typer.echo("models (nfdeploy train --model NAME):")
    for name in list_models():
        c = get_config(name)
        typer.echo(f"  {name:20s} {c.block:10s} depths={c.depths} channels={c.channels} input={c.input_size}")
    typer.echo("recipes (nfdeploy train NAME):")
    for name, desc in list_recipes().items():
        typer.echo(f"  {name:28s} {desc}")


def _int_list(text: str, what: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CliError(f"{what} takes a comma list of integers, got {text!r}") from None


@app.command()
@friendly
def serve(
    path: Path = typer.Argument(
        ..., help="Export dir (packaged on the fly) or a model repository from `nfdeploy package`."
    ),
    backend: ServedBackend = None,
    max_batch: MaxBatch = None,
    max_queue_delay_us: MaxQueueDelayUs = None,
    max_queue_size: MaxQueueSize = None,
    queue_timeout_us: QueueTimeoutUs = None,
    instances: Instances = None,
    threads: InstanceThreads = None,
    batch_invariant: BatchInvariant = None,
    allow_unchecked: AllowUnchecked = None,
    host: str = typer.Option(
        "127.0.0.1",
        help="Address to listen on (loopback by default; beyond it the repository, "
        "shared-memory, logging and trace APIs need a key printed at start).",
    ),
    http_port: int = typer.Option(8000),
    grpc_port: int = typer.Option(8001),
    metrics_port: int = typer.Option(8002),
):
    """Serve a Triton model repository (or an export, packaged as `nfdeploy package` would) with the bundled
    tritonserver: each request answered on its own, ready only once the model answers; Ctrl-C/SIGTERM drains and
    stops."""
    shaping = serving_values(locals())
    from nfdeploy.serve.server import ServeOptions, is_export_dir, serve_until_signal
    from nfdeploy.serve.tritonserver import ServerAddress

    if not is_export_dir(path) and any(v is not None for v in shaping.values()):
        given = ", ".join("--" + k.replace("_", "-") for k, v in shaping.items() if v is not None)
        raise CliError(
            f"{given}: {path} is a repository, whose config.pbtxt sets these; package it again to change them"
        )
    opts = ServeOptions(
        package=package_options(**shaping), address=ServerAddress(host, http_port, grpc_port, metrics_port)
    )
    raise typer.Exit(serve_until_signal(path, opts, log=typer.echo))


@app.command()
@friendly
def package(
    export_dir: Annotated[
        Path, typer.Argument(help="Export dir (manifest.json; its parity and bench reports beside it).")
    ],
    out: Path = typer.Option(..., "--out", "-o", help="Triton model repository to write (replaced atomically)."),
    backend: ServedBackend = None,
    max_batch: MaxBatch = None,
    max_queue_delay_us: MaxQueueDelayUs = None,
    max_queue_size: MaxQueueSize = None,
    queue_timeout_us: QueueTimeoutUs = None,
    instances: Instances = None,
    threads: InstanceThreads = None,
    batch_invariant: BatchInvariant = None,
    allow_unchecked: AllowUnchecked = None,
    env: str | None = typer.Option(
        None,
        "--env",
        help="EXECUTION_ENV_PATH of the Python-backend model: an environment "
        "(or conda-pack archive) with nfdeploy (default: this venv).",
    ),
    native: bool = typer.Option(
        False,
        "--native",
        help="Native onnxruntime_onnx / tensorrt_plan models for Triton's own "
        "container instead of the Python-backend model of the checked backend.",
    ),
    load: bool = typer.Option(
        True,
        "--load-check/--no-load-check",
        help="Load the repository in the bundled tritonserver (Python-backend repositories) and stop it.",
    ),
):
    """Write the Triton model repository of an export (what `nfdeploy serve` serves), check it, load it."""
    opts = package_options(**serving_values(locals()), env_path=env, native=native)
    from nfdeploy.serve.repository import check_repository, package_export
    from nfdeploy.serve.server import load_check

    for model in package_export(export_dir, out, opts, log=typer.echo):
        for note in model.notes:
            typer.echo(f"{model.name}: {note}")
    checks = check_repository(out, export_dir)
    for model, problems in checks.items():
        typer.echo(f"{model}: {'ok' if not problems else '; '.join(problems)}")
    if any(checks.values()):
        raise typer.Exit(1)
    if load and not native:
        typer.echo(f"loaded by the bundled tritonserver and answered its warm-up in {load_check(out):.1f} s")
    typer.echo(str(out))


@app.command()
@friendly
def predict(
    export_dir: ExportDir,
    images: Annotated[list[Path], typer.Argument(help="Image files: PNG, JPEG, ... of any size and mode.")],
    backend: Annotated[
        str | None,
        typer.Option(help="Backend to run (default: the fastest that passed parity, as `nfdeploy serve` chooses)."),
    ] = None,
    top: Annotated[int, typer.Option(help="Classes shown per image.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document on stdout instead of text.")] = False,
    batch: Annotated[int, typer.Option(help="Images run together.")] = 32,
    allow_unchecked: Annotated[
        bool, typer.Option("--allow-unchecked", help="Use a backend whose parity verdict is not pass.")
    ] = False,
    threads: Threads = None,
):
    """The top classes of each image, through the export's recorded preprocessing and a backend that passed parity;
    an unreadable file is named on one line and the others are still answered (exit 1 if any failed)."""
    import json
    import sys

    from rich.console import Console
    from rich.progress import Progress

    from nfdeploy.serve.predict import PredictOptions, predict_images

    options = PredictOptions(backend, top, batch, allow_unchecked, threads)
    err = Console(stderr=True)
    with Progress(console=err, transient=True, disable=len(images) <= batch or not sys.stderr.isatty()) as bar:
        task = bar.add_task("predicting", total=len(images))
        result = predict_images(
            export_dir, images, options, progress=lambda n: bar.advance(task, n), log=lambda m: typer.echo(m, err=True)
        )
    for p in result.failed:
        typer.echo(f"error: {p.error}", err=True)
    if as_json:
        doc = {"backend": result.backend, "parity": result.verdict.value, "chosen": result.chosen}
        typer.echo(json.dumps({**doc, "predictions": [p.to_dict() for p in result.predictions]}, indent=1))
    else:
        typer.echo(f"backend {result.backend} (parity: {result.verdict.value}; {result.chosen})", err=True)
        for p in result.predictions:
            if p.error is None:
                typer.echo(f"{p.path}: " + ", ".join(f"{c} {prob:.1%}" for c, prob in p.top))
    if result.failed:
        raise typer.Exit(1)


@app.command()
@friendly
def loadtest(
    export_dir: Path = typer.Argument(..., help="Export dir the server serves (for the outputs alone)."),
    url: str | None = typer.Option(None, help="gRPC address of a running server (loopback); default: start one."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Report dir (default EXPORT_DIR-reports/loadtest)."),
    concurrency: str = typer.Option("1,2,4,8,16", help="Comma list of concurrency levels."),
    backend: ServedBackend = None,
    max_batch: MaxBatch = None,
    max_queue_delay_us: MaxQueueDelayUs = None,
    max_queue_size: MaxQueueSize = None,
    queue_timeout_us: QueueTimeoutUs = None,
    threads: InstanceThreads = None,
    batch_invariant: BatchInvariant = None,
    window_s: float = typer.Option(1.0, help="Measurement window (s)."),
    max_windows: int = typer.Option(10, help="Windows per level at most."),
    samples: int = typer.Option(32, help="Distinct seeded inputs."),
    overload: int = typer.Option(
        0, help="Clients of an overload burst, 8 requests each (0: none; beyond the queue size to see refusals)."
    ),
    faults: bool = typer.Option(True, "--faults/--no-faults", help="NaN flood, bad requests, a disconnect, a restart."),
    speed: bool = typer.Option(True, "--speed/--no-speed", help="Served vs in-process speed, interleaved."),
):
    """Concurrency sweep against a Triton server: throughput, latency percentiles, server times, batch sizes,
    every response compared bitwise with the same sample alone, errors by kind, faults, speed side by side."""
    serving = serving_values(locals())
    from nfdeploy.check.backends import default_report_dir
    from nfdeploy.serve.loadtest import LoadOptions
    from nfdeploy.serve.loadtest import loadtest as run_loadtest

    opts = LoadOptions(
        concurrency=_int_list(concurrency, "--concurrency"),
        window_s=window_s,
        max_windows=max_windows,
        samples=samples,
        overload=overload,
        faults=faults,
        speed=speed,
        backend=backend,
    )
    out = out or default_report_dir(export_dir) / "loadtest"
    args = serve_flags(**serving)
    result = run_loadtest(export_dir, out, opts, url=url, serve_args=args, log=typer.echo)
    typer.echo(f"report: {out}/loadtest.md")
    failed = [fault for fault, status, _ in result.verdicts() if status.is_failure]
    if failed:
        typer.echo(f"error: load test failed — {', '.join(failed)} (see the report's verdicts)", err=True)
        raise typer.Exit(1)
