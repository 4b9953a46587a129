"""Instruction sets as other hardware: run parity under a capped x86 instruction set, in a child process.

The CPU libraries read their instruction-set caps from the environment once per process (oneDNN caches
ONEDNN_MAX_CPU_ISA on its first dispatch), so a cap takes effect only in a fresh process: `nfdeploy parity
EXPORT --isa sse41` runs `python -m nfdeploy parity EXPORT ...` (without --isa) with the caps of ISA_CAPS
set in its environment, and that child records them (isa_record) in parity.json and provenance.json.

What each variable caps:
- ONEDNN_MAX_CPU_ISA: oneDNN, i.e. torch's CPU convolutions and OpenVINO's oneDNN kernels and jit kernels;
- OV_CPU_MAX_ISA: OpenVINO's own CPU kernels (OpenVINO requires it equal to ONEDNN_MAX_CPU_ISA);
- MKL_ENABLE_INSTRUCTIONS: MKL, which runs torch's fp32 matrix products (the classifier's Linear).
torch's own vectorised kernels (ATEN_CPU_CAPABILITY) are deliberately not capped: they also make the
inputs (synthetic data drawn under ATEN_CPU_CAPABILITY=default differed from the AVX2 draw here), and a
cap must change the backends, not the data; the record says which capability torch ran.
ONNX Runtime's MLAS picks its kernels from CPUID and has no such switch: its rows run the CPU's own ISA.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from nfdeploy.check.parity_options import ParityError, ParityOptions
from nfdeploy.errors import UserError

# The user's word -> each library's spelling of that cap. None: leave the variable unset (no cap).
# "default" removes every cap, including any inherited from the caller's environment.
# MKL has no SSE4.1 level (its lowest is SSE4_2) and no separate VNNI/BF16 levels for fp32 products.
ISA_CAPS: dict[str, dict[str, str | None]] = {
    "sse41": {"ONEDNN_MAX_CPU_ISA": "SSE41", "OV_CPU_MAX_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
    "avx": {"ONEDNN_MAX_CPU_ISA": "AVX", "OV_CPU_MAX_ISA": "AVX", "MKL_ENABLE_INSTRUCTIONS": "AVX"},
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "OV_CPU_MAX_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "avx512_core": {
        "ONEDNN_MAX_CPU_ISA": "AVX512_CORE",
        "OV_CPU_MAX_ISA": "AVX512_CORE",
        "MKL_ENABLE_INSTRUCTIONS": "AVX512",
    },
    "avx512_core_vnni": {
        "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI",
        "OV_CPU_MAX_ISA": "AVX512_CORE_VNNI",
        "MKL_ENABLE_INSTRUCTIONS": "AVX512",
    },
    "avx512_core_bf16": {
        "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16",
        "OV_CPU_MAX_ISA": "AVX512_CORE_BF16",
        "MKL_ENABLE_INSTRUCTIONS": "AVX512",
    },
    "default": {"ONEDNN_MAX_CPU_ISA": None, "OV_CPU_MAX_ISA": None, "MKL_ENABLE_INSTRUCTIONS": None},
}
# Every variable a cap sets, plus oneDNN's older spelling and ATen's (stripped, so none inherited leaks in).
ISA_VARIABLES = (
    "ONEDNN_MAX_CPU_ISA",
    "OV_CPU_MAX_ISA",
    "MKL_ENABLE_INSTRUCTIONS",
    "DNNL_MAX_CPU_ISA",
    "ATEN_CPU_CAPABILITY",
)
REQUESTED_VARIABLE = "NFDEPLOY_ISA"  # tells the child which word its caps came from
ORT_NOTE = (
    "ONNX Runtime's MLAS picks its kernels from CPUID and has no instruction-set switch: "
    "ONNX Runtime rows run this CPU's own instruction set"
)


class IsaError(UserError, ValueError):
    """An instruction-set word nfdeploy does not know; one line."""


def check_isa(word: str) -> str:
    """The canonical word (lower case, '-' as '_'), or IsaError listing the known words."""
    w = word.strip().lower().replace("-", "_")
    if w not in ISA_CAPS:
        raise IsaError(f"unknown instruction set {word!r}; known: {', '.join(ISA_CAPS)}")
    return w


def isa_environment(word: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (default os.environ) with every cap variable replaced by the caps of `word`."""
    w = check_isa(word)
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in ISA_VARIABLES}
    env.update({k: v for k, v in ISA_CAPS[w].items() if v is not None})
    env[REQUESTED_VARIABLE] = w
    return env


def isa_record(environ: Mapping[str, str] | None = None) -> dict[str, object]:
    """What this process runs under: the requested word (None when run without --isa), the cap variables
    set in its environment (whoever set them), and ONNX Runtime's lack of a switch."""
    environ = os.environ if environ is None else environ
    return {
        "requested": environ.get(REQUESTED_VARIABLE) or None,
        "env": {k: environ[k] for k in ISA_VARIABLES if environ.get(k)},
        "onnxruntime": ORT_NOTE,
    }


def isa_label(record: Mapping[str, object] | None) -> str:
    """One line for reports: 'sse41 (ONEDNN_MAX_CPU_ISA=SSE41, ...)', 'uncapped' or 'not recorded'."""
    if not record:
        return "not recorded"
    env = record.get("env") or {}
    caps = ", ".join(f"{k}={v}" for k, v in env.items())  # type: ignore[union-attr]
    word = record.get("requested") or ("caps from the environment" if caps else "uncapped")
    return f"{word} ({caps})" if caps else str(word)


def parity_child_argv(export_dir: str | Path, out_dir: str | Path | None, options: ParityOptions) -> list[str]:
    """`python -m nfdeploy parity ...` with these options (the child of run_parity_under_isa). Options the command
    line has no flag for (invariance_samples, per_block_samples) must keep their defaults."""
    default = ParityOptions()
    unsupported = [k for k in ("invariance_samples", "per_block_samples") if getattr(options, k) != getattr(default, k)]
    if unsupported:
        raise ParityError(f"a parity child process takes no {', '.join(unsupported)}: `nfdeploy parity` has no flag")
    argv = [sys.executable, "-m", "nfdeploy", "parity", str(export_dir), "--max-samples", str(options.max_samples)]
    for flag, value in (
        ("--out", out_dir),
        ("--dataset", options.dataset),
        ("--data-path", options.data_path),
        ("--threads", options.threads),
    ):
        if value is not None:
            argv += [flag, str(value)]
    for o in options.only:
        argv += ["--only", o]
    switches = {
        "--per-block": options.per_block,
        "--batch-matrix": options.batch_matrix,
        "--save-outputs": options.save_outputs,
    }
    return argv + [flag for flag, on in switches.items() if on]


def parity_child_environment(word: str) -> dict[str, str]:
    """The child's environment: the caps of `word` (isa_environment), and this process's nfdeploy first on
    PYTHONPATH, so the child imports the same nfdeploy (a worktree's, not another installed copy)."""
    env = isa_environment(word)
    root = str(Path(__file__).resolve().parents[2])  # the directory that holds the nfdeploy package
    env["PYTHONPATH"] = os.pathsep.join([root, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    return env


def run_parity_under_isa(
    word: str, export_dir: str | Path, out_dir: str | Path | None = None, options: ParityOptions | None = None
) -> int:
    """Run parity in a child process with the caps of `word` (check_isa); its output goes to this
    process's terminal; returns its exit status."""
    argv = parity_child_argv(export_dir, out_dir, options or ParityOptions())
    return subprocess.run(argv, env=parity_child_environment(word)).returncode


__all__ = [
    "ISA_CAPS",
    "ISA_VARIABLES",
    "IsaError",
    "ORT_NOTE",
    "REQUESTED_VARIABLE",
    "check_isa",
    "isa_environment",
    "isa_label",
    "isa_record",
    "parity_child_argv",
    "parity_child_environment",
    "run_parity_under_isa",
]
