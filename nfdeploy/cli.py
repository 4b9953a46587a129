"""`nfdeploy` command line: a thin typer layer; every command calls library functions."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from nfdeploy.errors import UserError, one_line

if TYPE_CHECKING:
    from nfdeploy.serve.repository import PackageOptions

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
    dataset: str | None = typer.Option(None, help="Override data.dataset."),
    data_path: str | None = typer.Option(None, help="Override data.path."),
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
    precision: str | None = typer.Option(
        None,
        help="Comma list of fp32,fp16,bf16,int8 (TensorRT Q/DQ form),int8-ort "
        "(ONNX Runtime CPU form) (overrides the preset).",
    ),
    opset: int | None = typer.Option(None, help="ONNX opset (default 18; 20 for GELU models)."),
    io_dtype: str | None = typer.Option(None, help="float32 (Cast at the edges) or native I/O for fp16/bf16."),
    input_size: int | None = typer.Option(None, help="Static spatial input size (default: the model's)."),
    check: bool | None = typer.Option(None, "--check/--no-check", help="ONNX Runtime parity check (default on)."),
    trt: bool = typer.Option(False, "--trt", help="Also build one TensorRT engine per precision."),
    trt_flavour: str | None = typer.Option(None, help="auto (tensorrt, else tensorrt-rtx), tensorrt or tensorrt-rtx."),
    profile: list[str] = typer.Option([], "--profile", help="TensorRT optimization profile MIN:OPT:MAX (repeatable)."),
    tf32: bool | None = typer.Option(None, "--tf32/--no-tf32", help="TF32 in fp32 engines (default on)."),
    opt_level: int | None = typer.Option(None, help="Builder optimization level 0-5 (default 3)."),
    timing_cache: Path | None = typer.Option(None, help="Persistent timing cache file (TensorRT proper)."),
    compute_capability: list[str] = typer.Option(
        [], "--cc", help="TensorRT-RTX target compute capability (repeatable)."
    ),
    calibration: str | None = typer.Option(None, help="int8 calibration: minmax (default), percentile or entropy."),
    calib_samples: int | None = typer.Option(None, help="int8 calibration images (default 512, training split)."),
    calib_seed: int | None = typer.Option(None, help="Seed choosing the calibration images (default 0)."),
    calib_dir: Path | None = typer.Option(None, help="Folder of calibration images (needed for --timm int8)."),
    int8_keep: list[str] = typer.Option(
        [], "--int8-keep", help="ONNX node/tensor name (glob) kept in float (repeatable)."
    ),
    int8_ort_weight_bits: int | None = typer.Option(
        None,
        help="int8-ort weight range: 7 (default; runs correctly on every x86 CPU) or 8 (more accurate; only "
        "for CPUs with VNNI/AMX: saturates without them).",
    ),
):
    """Fold a trained run (or a timm NFNet) into static weights; export ONNX (+ TensorRT engines) + manifest."""
    from nfdeploy.export import Int8Overrides, OnnxOverrides, export_options, export_run, export_timm

    if (run_dir is None) == (timm is None):
        raise CliError("give either RUN_DIR or --timm NAME")
    opts = export_options(
        preset,
        OnnxOverrides(precisions=_split(precision), opset=opset, io_dtype=io_dtype, check=check, input_size=input_size),
        Int8Overrides(
            calibration=calibration,
            calib_samples=calib_samples,
            calib_seed=calib_seed,
            calib_dir=calib_dir,
            keep=int8_keep,
            ort_weight_bits=int8_ort_weight_bits,
        ),
        _trt_overrides(trt_flavour, profile, tf32, opt_level, timing_cache, compute_capability),
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


def _trt_overrides(flavour, profiles, tf32, opt_level, timing_cache, compute_capabilities):
    """The TensorRT flags `export` and `engine` share, as the library's override group."""
    from nfdeploy.export import TrtOverrides

    return TrtOverrides(
        flavour=flavour,
        profiles=profiles,
        tf32=tf32,
        optimization_level=opt_level,
        timing_cache=timing_cache,
        compute_capabilities=compute_capabilities,
    )


@app.command()
@friendly
def engine(
    onnx_file: Path = typer.Argument(..., help="ONNX file to build."),
    out: Path = typer.Option(..., "--out", "-o", help="Engine file to write (atomically)."),
    precision: str = typer.Option("fp32", help="Precision of the ONNX graph: fp32, fp16 or bf16 (strongly typed)."),
    profile: list[str] = typer.Option([], "--profile", help="Optimization profile MIN:OPT:MAX (repeatable)."),
    trt_flavour: str | None = typer.Option(None, help="auto, tensorrt or tensorrt-rtx."),
    tf32: bool | None = typer.Option(None, "--tf32/--no-tf32"),
    opt_level: int | None = typer.Option(None, help="Builder optimization level 0-5."),
    timing_cache: Path | None = typer.Option(None, help="Persistent timing cache file."),
    compute_capability: list[str] = typer.Option([], "--cc", help="TensorRT-RTX target compute capability."),
):
    """Build one TensorRT engine from an ONNX file; parser errors are listed one per line."""
    import json

    from nfdeploy.export import trt_options
    from nfdeploy.export.engine_build import EngineBuildError, build_engine
    from nfdeploy.export.onnx_graph import read_input_shape

    opts = trt_options(None, _trt_overrides(trt_flavour, profile, tf32, opt_level, timing_cache, compute_capability))
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
    export_dir: Path = typer.Argument(..., help="Export dir (manifest.json)."),
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
    export_dir: Path = typer.Argument(..., help="Export dir (manifest.json)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Report dir (default EXPORT_DIR-reports beside it)."),
    dataset: str | None = typer.Option(
        None, help="Dataset (default: the run's): digits, cifar10, imagefolder, synthetic."
    ),
    data_path: str | None = typer.Option(None, help="Path for cifar10 / imagefolder."),
    only: list[str] = typer.Option(
        [],
        "--only",
        help="Run only the backends this selects: whole name parts "
        "(fp32, onnxruntime-cpu, tensorrt) or a glob ('*fp16*'); repeatable.",
    ),
    max_samples: int = typer.Option(512, help="Test images used."),
    per_block: bool = typer.Option(False, "--per-block", help="Error at every block; the first diverging block."),
    batch_matrix: bool = typer.Option(
        False, "--batch-matrix", help="Batch sizes 1..64 vs batch 1, beside the BN twin."
    ),
    save_outputs: bool = typer.Option(
        False, "--save-outputs", help="Save outputs + provenance for `nfdeploy compare`."
    ),
    threads: int | None = typer.Option(None, help="torch CPU threads and ONNX Runtime intra-op threads."),
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
        only=only,
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
    export_dir: Path = typer.Argument(..., help="Export dir (manifest.json)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Report dir (default EXPORT_DIR-reports beside it)."),
    batch: str = typer.Option("1,8,32", "--batch", help="Comma list of batch sizes."),
    only: list[str] = typer.Option(
        [], "--only", help="Time only the backends this selects: whole name parts or a glob; repeatable."
    ),
    min_time: float = typer.Option(2.0, help="Seconds of timed iterations per backend and batch (at least 10 runs)."),
    warmup: float = typer.Option(1.0, help="Seconds of warm-up per backend and batch."),
    against: Path | None = typer.Option(
        None,
        "--against",
        help="Another export dir: time both side by side, report EXPORT_DIR / AGAINST per backend with a 95% interval.",
    ),
    max_time: float | None = typer.Option(
        None, "--max-time", help="Cap in seconds per cell and member (default 5 x min time)."
    ),
    threads: int | None = typer.Option(
        None, "--threads", help="CPU threads of torch and ONNX Runtime (default: as found)."
    ),
    compile: bool = typer.Option(True, "--compile/--no-compile", help="Time the torch.compile backends (CUDA)."),
):
    """Latency and throughput per backend and batch; unfolded NF vs folded NF vs folded BN twin side by side."""
    # torch's OpenMP threads spin after a parallel region (libgomp's default) and starve the next member of a
    # round; libgomp reads this once, when torch loads, which in this process is the import below.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from nfdeploy.perf import BenchOptions, bench_against, bench_report, parse_batches

    options = BenchOptions(
        batches=parse_batches(batch),
        only=only,
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
    batch: str = typer.Option("1,8,32", "--batch", help="Bench batch sizes (comma list)."),
    min_time: float = typer.Option(1.0, help="Bench seconds per backend and batch."),
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
        typer.echo(f"error: parity failed — {res.parity['failure']}", err=True)
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


# Options that shape a served Triton model: one definition each, shared by serve, package and loadtest.
BACKEND_OPT = typer.Option(
    None,
    "--backend",
    help="Backend to serve (default: the fastest that passed parity in the "
    "export's parity and bench reports; onnxruntime-cpu-fp32 when they do not decide).",
)
MAX_BATCH_OPT = typer.Option(None, "--max-batch", help="Largest batch Triton's dynamic batcher forms (default 32).")
QUEUE_DELAY_OPT = typer.Option(
    None,
    "--max-queue-delay-us",
    help="How long a request may wait for batch-mates, µs "
    "(default 0: batches form from what queued while the model ran).",
)
QUEUE_SIZE_OPT = typer.Option(
    None,
    "--max-queue-size",
    help="Requests waiting at most; beyond it a request is refused at once (default 32 × max batch).",
)
QUEUE_TIMEOUT_OPT = typer.Option(
    None, "--queue-timeout-us", help="A request waiting longer is refused (default: no timeout)."
)
INSTANCES_OPT = typer.Option(None, "--instances", help="Model instances, each its own backend (default 1).")
THREADS_OPT = typer.Option(None, "--threads", help="Threads per instance (ONNX Runtime/OpenVINO intra-op, torch CPU).")
BATCH_INVARIANT_OPT = typer.Option(
    None,
    "--batch-invariant/--no-batch-invariant",
    help="Pad every executed batch to "
    "--max-batch rows, so a response never depends on its batch-mates (not needed, and "
    "skipped, when parity measured the backend bitwise batch-invariant).",
)
ALLOW_UNCHECKED_OPT = typer.Option(
    None, "--allow-unchecked/--checked-only", help="Serve a backend that failed parity (said in its parameters)."
)


def _package_options(**given) -> PackageOptions:
    """PackageOptions from the CLI's serving options (None: the library's default)."""
    from nfdeploy.serve.repository import PackageOptions

    return PackageOptions(**{k: v for k, v in given.items() if v is not None})


def _serve_args(**given) -> list[str]:
    """The same options as `nfdeploy serve` flags (for the server the load test starts)."""
    out = []
    for k, v in given.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):  # flags whose off form is --no-NAME
            out.append(flag if v else "--no-" + flag[2:])
        elif v is not None:
            out += [flag, str(v)]
    return out


@app.command()
@friendly
def serve(
    path: Path = typer.Argument(
        ..., help="Export dir (packaged on the fly) or a model repository from `nfdeploy package`."
    ),
    backend: str | None = BACKEND_OPT,
    max_batch: int | None = MAX_BATCH_OPT,
    max_queue_delay_us: int | None = QUEUE_DELAY_OPT,
    max_queue_size: int | None = QUEUE_SIZE_OPT,
    queue_timeout_us: int | None = QUEUE_TIMEOUT_OPT,
    instances: int | None = INSTANCES_OPT,
    threads: int | None = THREADS_OPT,
    batch_invariant: bool | None = BATCH_INVARIANT_OPT,
    allow_unchecked: bool | None = ALLOW_UNCHECKED_OPT,
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
    from nfdeploy.serve.server import ServeOptions, is_export_dir, serve_until_signal
    from nfdeploy.serve.tritonserver import ServerAddress

    shaping = dict(
        backend=backend,
        max_batch=max_batch,
        max_queue_delay_us=max_queue_delay_us,
        max_queue_size=max_queue_size,
        queue_timeout_us=queue_timeout_us,
        instances=instances,
        threads=threads,
        batch_invariant=batch_invariant,
        allow_unchecked=allow_unchecked,
    )
    if not is_export_dir(path) and any(v is not None for v in shaping.values()):
        given = ", ".join("--" + k.replace("_", "-") for k, v in shaping.items() if v is not None)
        raise CliError(
            f"{given}: {path} is a repository, whose config.pbtxt sets these; package it again to change them"
        )
    opts = ServeOptions(
        package=_package_options(**shaping), address=ServerAddress(host, http_port, grpc_port, metrics_port)
    )
    raise typer.Exit(serve_until_signal(path, opts, log=typer.echo))


@app.command()
@friendly
def package(
    export_dir: Path = typer.Argument(..., help="Export dir (manifest.json; its parity and bench reports beside it)."),
    out: Path = typer.Option(..., "--out", "-o", help="Triton model repository to write (replaced atomically)."),
    backend: str | None = BACKEND_OPT,
    max_batch: int | None = MAX_BATCH_OPT,
    max_queue_delay_us: int | None = QUEUE_DELAY_OPT,
    max_queue_size: int | None = QUEUE_SIZE_OPT,
    queue_timeout_us: int | None = QUEUE_TIMEOUT_OPT,
    instances: int | None = INSTANCES_OPT,
    threads: int | None = THREADS_OPT,
    batch_invariant: bool | None = BATCH_INVARIANT_OPT,
    allow_unchecked: bool | None = ALLOW_UNCHECKED_OPT,
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
    from nfdeploy.serve.repository import check_repository, package_export
    from nfdeploy.serve.server import load_check

    opts = _package_options(
        backend=backend,
        max_batch=max_batch,
        max_queue_delay_us=max_queue_delay_us,
        max_queue_size=max_queue_size,
        queue_timeout_us=queue_timeout_us,
        instances=instances,
        threads=threads,
        batch_invariant=batch_invariant,
        allow_unchecked=allow_unchecked,
        env_path=env,
        native=native,
    )
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
def loadtest(
    export_dir: Path = typer.Argument(..., help="Export dir the server serves (for the outputs alone)."),
    url: str | None = typer.Option(None, help="gRPC address of a running server (loopback); default: start one."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Report dir (default EXPORT_DIR-reports/loadtest)."),
    concurrency: str = typer.Option("1,2,4,8,16", help="Comma list of concurrency levels."),
    backend: str | None = BACKEND_OPT,
    max_batch: int | None = MAX_BATCH_OPT,
    max_queue_delay_us: int | None = QUEUE_DELAY_OPT,
    max_queue_size: int | None = QUEUE_SIZE_OPT,
    queue_timeout_us: int | None = QUEUE_TIMEOUT_OPT,
    threads: int | None = THREADS_OPT,
    batch_invariant: bool | None = BATCH_INVARIANT_OPT,
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
    args = _serve_args(
        backend=backend,
        max_batch=max_batch,
        max_queue_delay_us=max_queue_delay_us,
        max_queue_size=max_queue_size,
        queue_timeout_us=queue_timeout_us,
        threads=threads,
        batch_invariant=batch_invariant,
    )
    run_loadtest(export_dir, out, opts, url=url, serve_args=args, log=typer.echo)
    typer.echo(f"report: {out}/loadtest.md")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
