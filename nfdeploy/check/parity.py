"""Parity: every backend against the float64 unfolded PyTorch model, on real labelled data.

Per backend: max |error|, relative L2 error, cosine similarity, top-1 agreement, accuracy and its
delta, judged by the precision table (nfdeploy/precision.py). Batch invariance: the one protocol of
nfdeploy.check.batch_matrix (each sample inside full batches of several sizes vs its own batch-1 output; an NF
net has no batch statistics, the BatchNorm twin in training mode is the contrast), with a small column set
by default and batch sizes 2..64 under --batch-matrix. Cross-backend: every pair of backends that ran.
One backend is active at a time.

Measure → result → render: measure_parity runs and judges (a ParityMeasurement: the typed ParityResult and the
arrays it was judged from; no file written), save_parity_outputs keeps the outputs for `nfdeploy compare`,
write_parity_report (parity_render) writes the views, add_per_block adds the forensics. parity_report is the one
entry that chains them. This module is parity's public face: it also offers the options (parity_options), the
result types, the report's file names and their reader (parity_result).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

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
    BatchMatrix,
    batch_invariance_matrix,
    bn_twin_matrix,
)
from nfdeploy.check.isa import isa_record
from nfdeploy.check.parity_options import ParityError, ParityOptions
from nfdeploy.check.parity_render import write_parity_report
from nfdeploy.check.parity_result import (
    PARITY_JSON,
    PARITY_MD,
    PARITY_PNG,
    BackendPair,
    ParityResult,
    ParityRow,
    read_parity_result,
)
from nfdeploy.check.per_block import per_block_report
from nfdeploy.check.saved_outputs import OUTPUTS_FILE, PROVENANCE_FILE, save_outputs
from nfdeploy.errors import one_line
from nfdeploy.metrics import compare_outputs, framework_errors, judge, top1_agreement
from nfdeploy.precision import describe_tolerance, get_precision, judged_tolerance, tolerances
from nfdeploy.runtime.base import Backend, BackendBroken, BackendUnavailable, run_batched
from nfdeploy.status import Status


class NothingCheckedError(ParityError):
    """No backend under test produced an output (all unavailable here): an error, never a pass."""


@dataclass
class ParityData:
    """The images parity judges on: normalised (`x`, what the model takes) and as the uint8 `pixels` they were
    normalised from (what an image-input backend takes; nfdeploy.preprocess makes one from the other), their
    labels (None when they are not the model's classes), a description, and why accuracy does not apply."""

    x: np.ndarray
    pixels: np.ndarray
    y: np.ndarray | None
    description: str
    accuracy_na: str | None = None


def load_parity_data(
    source: ExportSource, dataset: str | None = None, path: str | None = None, max_samples: int = 512
) -> ParityData:
    """The first `max_samples` test images of the export's run (or of `dataset`) as ParityData."""
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
    pixels = data.test.images[:n].numpy()
    desc = f"{data.name} test split ({n} images)"
    own_names = source.manifest.input.class_names
    trained_on = source.manifest.input.dataset
    same_classes = (
        (list(data.class_names) == list(own_names))
        if own_names and getattr(data, "class_names", None)
        else data.name == trained_on
    )
    if not same_classes:
        why = (
            f"the labels of {data.name} are not the model's classes (trained on {trained_on or 'unknown data'}): "
            "accuracy is not applicable"
        )
        return ParityData(x.numpy(), pixels, None, desc, why)
    return ParityData(x.numpy(), pixels, y.numpy(), desc)


@dataclass
class ParityReference:
    """What every backend is judged against: the inputs (normalised `x`, and the uint8 `pixels` they came from,
    which image-input backends take) and their labels (None: accuracy does not apply), the float64 reference's
    logits, and the reference framework's own rel L2 and top-1 agreement per dtype (the unfolded torch model on
    CPU, same inputs), which the judged tolerances scale with."""

    x: np.ndarray
    pixels: np.ndarray
    y: np.ndarray | None
    logits: np.ndarray
    framework: dict[str, float | None]
    framework_top1: dict[str, float]


@dataclass
class ParityMeasurement:
    """A measured parity run: its ParityResult, and what the later steps read (saved outputs, per-block): the
    export's source, the reference, each backend's logits and the backends that produced them."""

    result: ParityResult
    source: ExportSource
    reference: ParityReference
    outputs: dict[str, np.ndarray]
    ran: list[Backend]
    ref_backend: Backend


def _nothing_checked(chosen: Sequence[Backend], skipped: Sequence[tuple[str, str]]) -> NothingCheckedError:
    """The error for a run in which no backend produced an output; `skipped`: (name, reason) of each."""
    by_reason: dict[str, list[str]] = {}
    for name, reason in skipped:
        by_reason.setdefault(reason, []).append(name)
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
    b: Backend, ref: ParityReference, samples: int, batches: Sequence[int], log: Callable[[str], None]
) -> tuple[ParityRow, tuple[np.ndarray, dict[str, Any]] | None]:
    """One backend, active only inside this call: its parity row and, when it ran, its outputs and its batch-
    invariance matrix (on the first `samples` inputs). An image-input backend is fed the pixels the reference's
    inputs were normalised from. skipped = cannot run here; broken = the artifact failed to load; crashed = it
    loaded, then failed to run."""
    inputs = ref.pixels if b.takes_pixels else ref.x
    reason = b.unavailable_reason()
    if reason:
        log(f"  {b.name}: skipped ({reason})")
        return ParityRow.not_run(b.spec.describe(), Status.SKIPPED, reason), None
    try:
        b.activate()
    except BackendUnavailable as e:
        log(f"  {b.name}: skipped ({e})")
        return ParityRow.not_run(b.spec.describe(), Status.SKIPPED, str(e)), None
    except Exception as e:  # noqa: BLE001 - BackendBroken, or anything else a loader raises: a failure, reported
        why = one_line(e, 240, with_type=not isinstance(e, BackendBroken))
        log(f"  {b.name}: FAILED to load ({why})")
        return ParityRow.not_run(b.spec.describe(), Status.BROKEN, f"failed to load: {why}"), None
    try:
        out = run_batched(b, inputs)
        found = (out, _invariance(b, inputs[:samples], batches))
        described = b.describe()
    except Exception as e:  # noqa: BLE001 - a runtime failing at run time is a finding, not a crash of the report
        log(f"  {b.name}: CRASHED while running ({one_line(e, 240)})")
        return ParityRow.not_run(b.spec.describe(), Status.CRASHED, f"crashed while running: {one_line(e, 240)}"), None
    finally:
        b.deactivate()
    tol = judged_tolerance(b.precision, ref.framework.get(b.precision), ref.framework_top1.get(b.precision))
    row = ParityRow.judged(described, judge(out, ref.logits, b.precision, ref.y, tol))
    acc = f", accuracy {row.accuracy:.2%}" if row.accuracy is not None else ""
    log(
        f"  {b.name}: rel L2 {row.rel_l2:.2e}, SQNR {row.sqnr_db or float('inf'):.1f} dB, top-1 agreement "
        f"{row.top1_agreement:.2%}{acc} ({describe_tolerance(row.tolerance)}) → {row.status.value}"
        + (f" ({row.reason})" if row.reason is not None else "")
    )
    return row, found


def _pairwise(outputs: dict[str, np.ndarray]) -> list[BackendPair]:
    pairs = []
    for a, b in itertools.combinations(outputs, 2):
        r = compare_outputs(outputs[a], outputs[b])
        pairs.append(BackendPair(a, b, r["rel_l2"], r["max_abs"], top1_agreement(outputs[a], outputs[b])))
    return pairs


def parity_reference(
    source: ExportSource,
    ref_backend: Backend,
    precisions: Sequence[str],
    options: ParityOptions,
    log: Callable[[str], None] = print,
) -> tuple[ParityReference, str, str | None]:
    """The reference of a run: the data (load_parity_data), the float64 reference's logits, and the reference
    framework's own error in each of `precisions`; with the data's description and why accuracy does not apply
    (or None)."""
    data = load_parity_data(source, options.dataset, options.data_path, options.max_samples)
    x, data_desc, accuracy_na = data.x, data.description, data.accuracy_na
    log(f"parity of {source.manifest.model} on {data_desc}; reference {REFERENCE}")
    if accuracy_na:
        log(f"  {accuracy_na}")
    with ref_backend:  # run_tensor, not run(): run() hands back float32, the reference stays float64
        ref = np.concatenate(
            [ref_backend.run_tensor(torch.from_numpy(x[i : i + 64])).double().numpy() for i in range(0, len(x), 64)]
        )
    full = {p: framework_errors(source.model, x, ref, p) for p in sorted(set(precisions))}
    for p, e in full.items():
        if e is not None:
            log(
                f"  reference framework (torch CPU unfolded) {p}: rel L2 {e['rel_l2']:.2e}, "
                f"top-1 agreement {e['top1_agreement']:.2%}"
            )
    framework = {p: None if e is None else e["rel_l2"] for p, e in full.items()}
    framework_top1 = {p: e["top1_agreement"] for p, e in full.items() if e}
    return ParityReference(x, data.pixels, data.y, ref, framework, framework_top1), data_desc, accuracy_na


def measure_parity(
    export_dir: str | Path,
    options: ParityOptions | None = None,
    *,
    backends: Sequence[Backend] | None = None,
    log: Callable[[str], None] = print,
) -> ParityMeasurement:
    """Run every selected backend on the data, one active at a time, and judge it against the reference; writes
    no file. `backends`: a list already made by export_backends (default: all of them). A backend is judged by
    max(the precision table's floor, 2 x the unfolded torch model's own error in that dtype on these inputs)
    (precision.judged_tolerance). A backend that cannot run here is skipped; one whose artifact fails to load
    ("broken") or that fails while running ("crashed") fails the run; a run in which no selected backend
    produced an output raises NothingCheckedError. options.threads: torch CPU threads and ONNX Runtime intra-op
    threads (of the backends made here; given `backends` keep their own)."""
    options = options or ParityOptions()
    export_dir = Path(export_dir)
    source = load_export_source(export_dir)
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    all_backends = list(backends) if backends is not None else export_backends(source, threads=options.threads)
    chosen = select_backends([b for b in all_backends if b.name != REFERENCE], options.only)
    reasons = {b.name: b.unavailable_reason() for b in chosen}  # the cheap probe, once per backend up front
    if chosen and all(reasons.values()):  # say so before the reference runs
        raise _nothing_checked(chosen, [(b.name, reasons[b.name]) for b in chosen])
    ref_backend = next(b for b in all_backends if b.name == REFERENCE)
    runnable = [b.precision for b in chosen if reasons[b.name] is None]
    ref, data_desc, accuracy_na = parity_reference(source, ref_backend, runnable, options, log)
    rows = [ParityRow.judged(ref_backend.describe(), judge(ref.logits, ref.logits, "fp64", ref.y))]
    xi = ref.x[: options.invariance_samples]
    batches = MATRIX_BATCHES if options.batch_matrix else DEFAULT_BATCHES
    outputs: dict[str, np.ndarray] = {}
    matrix: dict[str, Any] = {}
    for b in chosen:
        row, found = _check_backend(b, ref, options.invariance_samples, batches, log)
        rows.append(row)
        if found is not None:
            outputs[b.name], matrix[b.name] = found
    if not outputs and not any(r.status.is_failure for r in rows):
        raise _nothing_checked(chosen, [(r.name, r.reason) for r in rows if r.status is Status.SKIPPED])
    matrix.update(bn_twin_matrix(source, xi, batches))  # the contrast: batch statistics in train mode
    result = ParityResult(
        model=source.manifest.model,
        export_dir=str(export_dir),
        data=data_desc,
        accuracy=accuracy_na or "on the labelled test split",
        reference=REFERENCE,
        tolerances=tolerances(),
        backends=rows,
        batch_matrix=BatchMatrix(list(batches), int(len(xi)), matrix),
        pairwise=_pairwise(outputs),
        framework_errors=ref.framework,
        framework_top1=ref.framework_top1,
        # The instruction-set caps this process runs under (nfdeploy.check.isa) and what torch's own dispatch chose.
        isa={**isa_record(), "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()},
    )
    ran = [b for b in chosen if b.name in outputs]
    return ParityMeasurement(result, source, ref, outputs, ran, ref_backend)


def save_parity_outputs(measured: ParityMeasurement, out_dir: Path, threads: int | None = None) -> list[str]:
    """outputs.npz + provenance.json (nfdeploy.check.saved_outputs) of the reference and every backend that ran,
    for `nfdeploy compare`; returns the files' names. `threads`: the threads the run was asked for."""
    result, ref = measured.result, measured.reference
    described = {
        r.name: {k: r.backend.get(k) for k in ("precision", "runtime", "device", "threads", "file", "providers")}
        for r in result.backends
        if r.name in measured.outputs or r.name == REFERENCE
    }
    outputs = {REFERENCE: ref.logits, **measured.outputs}
    save_outputs(out_dir, measured.source.manifest, ref.x, ref.y, outputs, described, threads, isa=result.isa)
    return [OUTPUTS_FILE, PROVENANCE_FILE]


def add_per_block(measured: ParityMeasurement, samples: int, log: Callable[[str], None] = print) -> None:
    """The per-block forensics (nfdeploy.check.per_block) of every backend that ran, on the first `samples`
    inputs, into the result's per_block; a failure goes into per_block_error instead (the main report stands)."""
    result = measured.result
    tols = {r.name: r.tolerance for r in result.backends if r.tolerance is not None}
    try:
        result.per_block = per_block_report(
            measured.source,
            measured.reference.x[:samples],
            [b for b in measured.ran if not b.takes_pixels],  # their graph's points take pixels: not instrumented
            measured.ref_backend,
            tols,
            {k: v[:samples] for k, v in measured.outputs.items()},
            log=log,
        )
    except Exception as e:  # noqa: BLE001 - reported in the written report, and the run still says so
        result.per_block_error = one_line(e, 400)
        log(f"  per-block forensics failed: {result.per_block_error}")


def parity_report(
    export_dir: str | Path,
    out_dir: str | Path | None = None,
    options: ParityOptions | None = None,
    *,
    backends: Sequence[Backend] | None = None,
    log: Callable[[str], None] = print,
) -> ParityResult:
    """Measure (measure_parity), save the outputs when asked, write parity.json / parity.md / parity.png to
    out_dir (default: beside the export dir, see default_report_dir), then the per-block forensics when asked,
    written after the main report is on disk so that their failure loses nothing. A run that checked nothing
    raises NothingCheckedError and writes nothing."""
    options = options or ParityOptions()
    measured = measure_parity(export_dir, options, backends=backends, log=log)
    result = measured.result
    out_dir = Path(out_dir) if out_dir is not None else default_report_dir(export_dir)
    result.out_dir = str(out_dir)
    if options.save_outputs:
        result.saved_outputs = save_parity_outputs(measured, out_dir, options.threads)
    write_parity_report(result, out_dir)
    if options.per_block:
        add_per_block(measured, options.per_block_samples, log)
        write_parity_report(result, out_dir)
    return result


__all__ = [
    "PARITY_JSON",
    "PARITY_MD",
    "PARITY_PNG",
    "BackendPair",
    "NothingCheckedError",
    "ParityError",
    "ParityMeasurement",
    "ParityOptions",
    "ParityReference",
    "ParityResult",
    "ParityRow",
    "add_per_block",
    "ParityData",
    "load_parity_data",
    "measure_parity",
    "parity_reference",
    "parity_report",
    "read_parity_result",
    "save_parity_outputs",
    "write_parity_report",
]
