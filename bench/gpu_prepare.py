"""Prepare the GPU run on the CPU machine: the carried bundle and the CPU half of the comparison.

    python -m bench.gpu_prepare [--bundle .gpu/bundle] [--cpu-out .gpu/cpu] [--epochs 10]

Trains and exports the digits model into BUNDLE, records what the TensorRT-RTX builder says for Hopper, writes
BUNDLE/bundle.json (every file's size and sha256), and runs the CPU half (parity of the same ONNX files on this
machine, outputs saved) into CPU_OUT/parity-nf_digits: nfdeploy.evidence.prepare says each step. BUNDLE is what
travels (carry it: `.gpu/bundle`); it must stay well under 64 MiB with the repo.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nfdeploy.evidence import PrepareOptions, prepare_bundle

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=REPO / ".gpu" / "bundle")
    ap.add_argument("--cpu-out", type=Path, default=REPO / ".gpu" / "cpu")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--preset", default="all_precisions")
    ap.add_argument("--samples", type=int, default=512, help="parity samples (the GPU suite uses 512 for digits)")
    ap.add_argument("--no-rtx", action="store_true")
    args = ap.parse_args(argv)
    options = PrepareOptions(
        bundle=args.bundle,
        cpu_out=args.cpu_out,
        epochs=args.epochs,
        preset=args.preset,
        samples=args.samples,
        rtx=not args.no_rtx,
    )
    return 0 if prepare_bundle(options) else 1


if __name__ == "__main__":
    sys.exit(main())
