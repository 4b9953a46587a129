"""A Triton model repository from an export (with engines when it has them): every config.pbtxt, its
parse into Triton's ModelConfig (JSON) and the checks, written beside each other; model files stay out.

    python bench/serve_repository.py EXPORT_DIR [--out bench/results/serve-cpu-DATE/repository]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from nfdeploy.artifacts import atomic_write_json  # noqa: E402
from nfdeploy.serve.repository import CONFIG, check_repository, describe_repository, package_export  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export", type=Path)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / f"serve-cpu-{date.today()}" / "repository")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as td:
        repo = package_export(args.export, Path(td) / "repo")
        checks = check_repository(repo, args.export)
        args.out.mkdir(parents=True, exist_ok=True)
        for model in checks:
            shutil.copy(repo / model / CONFIG, args.out / f"{model}.config.pbtxt")
        atomic_write_json(args.out / "parsed.json", describe_repository(repo))
        atomic_write_json(args.out / "checks.json", checks)
        for model, problems in checks.items():
            print(f"{model}: {'ok' if not problems else '; '.join(problems)}")
    return 1 if any(checks.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
