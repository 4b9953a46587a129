"""Both Triton model repositories of an export: the Python-backend one `nfdeploy serve` serves (loaded by the
bundled tritonserver) and the native one for Triton's own container (with engines when it has them): every
config.pbtxt, its parse into Triton's ModelConfig (JSON) and the checks, written beside each other; model
files stay out.

    python -m bench.serve_repository EXPORT_DIR [--out bench/results/serve-cpu-DATE/repository]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from datetime import date
from pathlib import Path

from nfdeploy.artifacts import atomic_write_json
from nfdeploy.serve.repository import (
    MODEL_CONFIG,
    PackageOptions,
    check_repository,
    describe_repository,
    package_export,
)
from nfdeploy.serve.server import load_check


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export", type=Path)
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / f"serve-cpu-{date.today()}" / "repository"
    )
    args = ap.parse_args(argv)
    failed = False
    with tempfile.TemporaryDirectory() as td:
        for form, native in (("python", False), ("native", True)):
            repo = Path(td) / form
            package_export(args.export, repo, PackageOptions(native=native))
            checks = check_repository(repo, args.export)
            out = args.out / form
            out.mkdir(parents=True, exist_ok=True)
            for model in checks:
                shutil.copy(repo / model / MODEL_CONFIG, out / f"{model}.config.pbtxt")
            atomic_write_json(out / "parsed.json", describe_repository(repo))
            result = {"checks": checks}
            if not native and not any(checks.values()):
                result["load_check_s"] = load_check(repo)
            atomic_write_json(out / "checks.json", result)
            for model, problems in checks.items():
                print(f"{form} {model}: {'ok' if not problems else '; '.join(problems)}")
            failed |= any(checks.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
