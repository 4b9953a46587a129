"""Self-check of the interleaved-rounds method: `nfdeploy bench EXPORT --against COPY` (an export dir
against a `cp -r` copy of itself) on torch CPU and ONNX Runtime CPU, quiet and with a second process
burning one core throughout. The ratio must be 1.00 with an interval that contains 1.00.

    python -m bench.against_selfcheck EXPORT_DIR [--batches 1,8] [--min-time 1] [--max-time 20]
        [--out bench/results/against-cpu-DATE]

Writes OUT.json and OUT.md (one section per condition) and keeps each condition's against.md.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

from nfdeploy.artifacts import atomic_write_json, atomic_write_text
from nfdeploy.perf import BenchOptions, bench_against, render_against

BACKENDS = ["torch-cpu-fp32-folded", "onnxruntime-cpu-fp32"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export", type=Path)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--min-time", type=float, default=1.0)
    ap.add_argument("--max-time", type=float, default=20.0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / f"against-cpu-{date.today()}")
    args = ap.parse_args(argv)
    out: dict = {"export": str(args.export), "backends": BACKENDS, "conditions": {}}
    md = [
        "# Export against a copy of itself (self-check of the method)",
        "",
        f"Command: `python -m bench.against_selfcheck {args.export} --batches {args.batches} --min-time "
        f"{args.min_time} --max-time {args.max_time}`. Backends {', '.join(BACKENDS)}.",
        "",
    ]
    options = BenchOptions(
        batches=args.batches, only=BACKENDS, min_time=args.min_time, warmup=0.5, max_time=args.max_time, compile=False
    )
    with tempfile.TemporaryDirectory() as td:
        copy = Path(td) / "copy"
        shutil.copytree(args.export, copy)
        for cond in ("quiet", "busy core"):
            burner = None
            if cond == "busy core":  # a second process burning one core throughout, killed afterwards
                burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            try:
                rep = bench_against(args.export, copy, Path(td) / cond.replace(" ", "-"), options)
            finally:
                if burner is not None:
                    burner.kill()
                    burner.wait()
            out["conditions"][cond] = rep.to_dict()
            md += [f"## {cond}" + (" (a `python -c 'while True: pass'` process throughout)" if burner else ""), ""]
            md += render_against(rep).split("\n", 2)[2:]
            md.append("")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out.with_suffix(".json"), out)
    atomic_write_text(args.out.with_suffix(".md"), "\n".join(md))
    print(f"wrote {args.out.with_suffix('.json')}, {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
