"""The GPU evidence suite (issue 12): parity, batch invariance and latency on a real GPU, in phases, and the
bundle the CPU machine prepares for it. `python -m bench.gpu_suite` and `python -m bench.gpu_prepare` call it.

Modules: steps (a phase's steps under time limits, its summary and the packed reports that come back), bundle
(the carried digits run + export, relocated), workloads (nf_resnet50 with seeded random weights, the folded
twin as torch backends), saved_parity (parity with saved outputs), fold_latency (unfolded vs folded vs twin in
interleaved rounds), context (options, sizes, the shared state of one invocation), phase_parity (1),
phase_latency (2), phase_runtimes (3: ONNX Runtime CUDA EP, 4: TensorRT-RTX), phase_serving (5), suite (the
entry), prepare (the CPU machine's half).

Without a GPU every CUDA backend is reported as skipped with its reason, and the CPU backends run: the same
command rehearses the suite on a CPU machine. No number is written for anything that did not run.
"""

from nfdeploy.evidence.context import DEFAULT_BUDGET, PHASE_TITLES, SuiteError, SuiteOptions
from nfdeploy.evidence.prepare import PrepareOptions, prepare_bundle
from nfdeploy.evidence.suite import run_suite

__all__ = [
    "DEFAULT_BUDGET",
    "PHASE_TITLES",
    "PrepareOptions",
    "SuiteError",
    "SuiteOptions",
    "prepare_bundle",
    "run_suite",
]
