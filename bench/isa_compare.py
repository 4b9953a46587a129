"""Instruction sets as other hardware (issue 17 §4): one export's parity with saved outputs under several
instruction-set caps (`nfdeploy parity --isa WORD --save-outputs`, each in its own child process), then
`nfdeploy compare` of the uncapped run against each capped one: per backend, share of samples bitwise
identical, max ULP, rel L2, top-1 agreement.

    python -m bench.isa_compare EXPORT_DIR --out bench/results/isa-DATE [--isa default,avx,sse41] [--threads 1]

One thread by default, so only the instruction set differs between runs. ONNX Runtime (MLAS) has no
instruction-set switch: its rows are the control (they should be bitwise identical).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

from nfdeploy.artifacts import atomic_write_json, atomic_write_text
from nfdeploy.check.isa import ISA_CAPS, check_isa, isa_environment
from nfdeploy.check.saved_outputs import OUTPUTS_FILE, compare_saved_runs, output_pair
from nfdeploy.render import markdown_table

TWIN = "bn-twin-torch-cpu-fp32-folded"
REPO = Path(__file__).resolve().parent.parent  # the twin's children run `python -m bench.isa_compare` from here


def twin_child(export: Path, inputs: Path, out: Path, threads: int) -> None:
    """The BN twin (the export's topology with BatchNorm, random constants, folded: the bench's twin) in torch
    fp32 on the saved inputs, under this process's instruction-set caps."""
    import numpy as np
    import torch

    from nfdeploy.check.backends import load_export_source
    from nfdeploy.perf.fold_groups import folded_twin

    torch.set_num_threads(threads)
    with np.load(inputs) as z:
        x = torch.from_numpy(z["inputs"])
    with torch.no_grad():
        np.save(out, folded_twin(load_export_source(export))(x).float().numpy())


def twin_rows(export: Path, runs: dict[str, Path], words: list[str], threads: int) -> list[dict]:
    """The BN twin's outputs under each cap (one child process each), the first word against the others."""
    import numpy as np

    outs = {}
    for w in words:
        f = runs[w] / "bn_twin_outputs.npy"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.isa_compare",
                str(export.resolve()),
                "--twin-child",
                str((runs[words[0]] / OUTPUTS_FILE).resolve()),
                str(f.resolve()),
                "--threads",
                str(threads),
            ],
            env=isa_environment(w, os.environ),
            cwd=REPO,
            check=True,
        )
        outs[w] = np.load(f)
        f.unlink()  # the comparison is the record; the array is re-made by the command
    return [{"A": words[0], "B": w, "backend": TWIN, **output_pair(outs[words[0]], outs[w], "fp32")} for w in words[1:]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--twin-child", nargs=2, type=Path, metavar=("INPUTS_NPZ", "OUT_NPY"), help=argparse.SUPPRESS)
    ap.add_argument("--isa", default="default,avx,sse41", help="comma list; the first is the baseline")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", action="append", default=None, help="backend selection passed to parity (repeatable)")
    args = ap.parse_args()
    if args.twin_child:
        return twin_child(args.export, *args.twin_child, args.threads)
    if args.out is None:
        ap.error("--out is required")
    words = [check_isa(w) for w in args.isa.split(",")]
    only = args.only or ["fp32"]
    runs = {}
    for w in words:
        d = args.out / "saved" / w  # not "runs/": .gitignore drops every runs/ dir
        cmd = [
            sys.executable,
            "-m",
            "nfdeploy",
            "parity",
            str(args.export),
            "--isa",
            w,
            "--save-outputs",
            "-o",
            str(d),
            "--threads",
            str(args.threads),
            *[a for o in only for a in ("--only", o)],
        ]
        print("+", shlex.join(cmd), flush=True)
        rc = subprocess.run(cmd).returncode
        if rc not in (0, 1):  # 1: some backend failed parity; its outputs are still saved and compared
            sys.exit(f"parity under {w} exited {rc}")
        runs[w] = d
    base, rows, reports = words[0], [], {}
    for w in words[1:]:
        rep = compare_saved_runs(runs[base], runs[w], args.out / "compare" / f"{base}-vs-{w}")
        reports[w] = rep
        for r in rep["same_backend"]:
            rows.append(
                {
                    "A": rep["machine_a"]["isa"],
                    "B": rep["machine_b"]["isa"],
                    "backend": r["backend"],
                    "bitwise identical": r["bitwise_share"],
                    "max ULP": r["max_ulp"],
                    "rel L2": r["rel_l2"],
                    "top-1 agreement": r["top1_agreement"],
                }
            )
    for r in twin_rows(args.export, runs, words, args.threads):
        rows.append(
            {
                "A": r["A"],
                "B": reports[r["B"]]["machine_b"]["isa"],
                "backend": r["backend"],
                "bitwise identical": r["bitwise_share"],
                "max ULP": r["max_ulp"],
                "rel L2": r["rel_l2"],
                "top-1 agreement": r["top1_agreement"],
            }
        )
    atomic_write_json(
        args.out / "isa_compare.json",
        {
            "export": str(args.export),
            "isa_caps": {w: ISA_CAPS[w] for w in words},
            "threads": args.threads,
            "only": only,
            "rows": rows,
        },
    )
    cmd = f"python -m bench.isa_compare {args.export} --out {args.out} --isa {','.join(words)} --threads {args.threads}"
    md = [
        "# Across instruction sets\n",
        f"Command: `{cmd}`. Baseline: {base}; "
        f"{args.threads} thread(s); backends selected by {only}. Each capped run is a child process "
        "(`nfdeploy parity EXPORT --isa WORD --save-outputs`); caps per word:\n",
        markdown_table([{"word": w, **{k: v or "-" for k, v in ISA_CAPS[w].items()}} for w in words]),
        "\nONNX Runtime's MLAS picks its kernels from CPUID and has no instruction-set switch: its rows run this "
        "CPU's own instruction set in every run (the control). torch's own ATen kernels are not capped (they also "
        "make the inputs). The BN twin row: the export's topology with BatchNorm in place of the NF scaling, random "
        "constants, folded (the bench's twin), in torch fp32 on the same inputs, one child process per cap "
        f"(`{TWIN}`).\n",
        "## Uncapped vs each cap, per backend\n",
        markdown_table(rows, floatfmt="{:.3g}"),
    ]
    atomic_write_text(args.out / "isa_compare.md", "\n".join(md))
    print((args.out / "isa_compare.md").read_text())


if __name__ == "__main__":
    main()
