"""`nfdeploy loadtest --serve` on a digits export and on nf_resnet50 (randomised, 224²): the table per
concurrency, the bitwise share, the error counts and the two speed ratios, into one results dir.

    python bench/serve_loadtest.py [--digits EXPORT] [--r50 EXPORT] [--out bench/results/serve-cpu-DATE]
        [--only digits|nf_resnet50]

Without --digits, trains nf_digits for 2 epochs and exports it; without --r50, writes a randomised
nf_resnet50 run and exports it. Each export gets a parity report for the served backend first (the
server refuses nothing then, and its parameters say "pass").
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.gpu.sources import write_random_run  # noqa: E402
from nfdeploy.backends import default_report_dir  # noqa: E402
from nfdeploy.export import export_options, export_run  # noqa: E402
from nfdeploy.parity import parity_report  # noqa: E402
from nfdeploy.serve.loadtest import LoadOptions, loadtest  # noqa: E402

SERVED = "onnxruntime-cpu-fp32"
# nf_resnet50 on 2 CPU cores answers a few requests a second: longer windows, fewer levels.
SETTINGS = {
    "digits": dict(opts=LoadOptions(concurrency=(1, 2, 4, 8, 16), window_s=1.0, max_windows=10, samples=32, overload=64),
                   max_batch=32, delay_us=1000),
    "nf_resnet50": dict(opts=LoadOptions(concurrency=(1, 2, 4, 8), window_s=4.0, max_windows=5, samples=16, overload=32,
                                         timeout_s=60.0), max_batch=8, delay_us=5000),
}


def make_export(kind: str, root: Path) -> Path:
    if kind == "digits":
        from nfdeploy.config import load_recipe
        from nfdeploy.train import train

        run = train(load_recipe("nf_digits", {"train.epochs": 2}), root / "run", progress=False).run_dir
    else:
        run = write_random_run(root / "run", "nf_resnet50", input_size=224)
    export_run(run, root / "export", export_options(precisions=["fp32"], check=False))
    return root / "export"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / f"serve-cpu-{date.today()}")
    ap.add_argument("--digits", type=Path, default=None)
    ap.add_argument("--r50", type=Path, default=None)
    ap.add_argument("--only", choices=sorted(SETTINGS), default=None)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as td:
        for kind, given in (("digits", args.digits), ("nf_resnet50", args.r50)):
            if args.only and kind != args.only:
                continue
            export = given or make_export(kind, Path(td) / kind)
            if not (default_report_dir(export) / "parity.json").is_file():
                parity_report(export, only=[SERVED], max_samples=64, invariance_samples=8)
            s = SETTINGS[kind]
            out = args.out / kind
            loadtest(export, out, s["opts"], serve_backend=SERVED, max_batch=s["max_batch"], max_queue_delay_us=s["delay_us"])
            log = out.parent / f"{out.name}-server.log"
            if log.is_file():  # the server's own log stays out of the committed results
                log.unlink()
            shutil.copy(default_report_dir(export) / "parity.md", out / "parity.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
