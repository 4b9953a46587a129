"""The GPU evidence suite (issue 12): parity, batch invariance and latency on a real GPU, in phases.

    python -m bench.gpu_suite --bundle .gpu/bundle --out OUT --work /tmp/gs-work --phase 1,2 [--deadline-s 540]

Phases, most valuable first; each writes OUT/phaseN.tar.gz (its reports, saved outputs) and OUT/summary.json
after every step, so a run cut short returns every step it finished (at most 8 files come back):
1 torch parity and batch invariance, 2 latency (torch CUDA; unfolded vs folded vs BN twin in interleaved
rounds), 3 ONNX Runtime CUDA EP, 4 TensorRT-RTX, 5 serving (not in the default list). What each phase runs:
nfdeploy.evidence (phase_parity, phase_latency, phase_runtimes, phase_serving); the device calls:
docs/gpu-runbook.md. Without a GPU every CUDA backend is reported as skipped with its reason and the CPU
backends run: the same command rehearses the suite on a CPU machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nfdeploy.evidence import SuiteError, SuiteOptions, run_suite

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=REPO / ".gpu" / "bundle", help="carried digits run + export")
    ap.add_argument("--out", type=Path, required=True, help="where phaseN.json / phaseN.tar.gz / suite.log go")
    ap.add_argument(
        "--work",
        type=Path,
        default=Path("/tmp/gs-work"),
        help="exports, runs, reports (kept while the machine stays warm)",
    )
    ap.add_argument("--phase", default="1,2,3,4", help="comma list of phases to run, in the order given")
    ap.add_argument("--deadline-s", type=float, default=540.0, help="wall-time limit of this invocation")
    ap.add_argument("--budget", action="append", default=[], metavar="N=S", help="phase N's budget in s (repeatable)")
    ap.add_argument("--compile", action="store_true", help="also torch.compile backends")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (tests)")
    args = ap.parse_args(argv)
    try:
        options = SuiteOptions.parse(
            args.phase,
            args.budget,
            out=args.out,
            bundle=args.bundle,
            work=args.work,
            deadline_s=args.deadline_s,
            compile=args.compile,
            tiny=args.tiny,
        )
    except SuiteError as e:
        ap.error(str(e))
    return run_suite(options)


if __name__ == "__main__":
    sys.exit(main())
