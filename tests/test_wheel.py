"""The wheel, as a user gets it: build it, install it into a fresh venv (no repo on the path) with
the onnx extra, then train and export from a directory outside the repo."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Not copied into the build tree: setuptools' build/ keeps modules deleted from the source since the
# last build (and ships them); egg-info is rebuilt; the rest is not source.
_NOT_SOURCE_TOP = {".git", ".venv", "build", "dist", ".pytest_cache", ".whl", "runs", "exports"}


def _ignore(directory: str, names: list[str]) -> set[str]:
    top = Path(directory).resolve() == REPO
    return {n for n in names if n == "__pycache__" or n.endswith(".egg-info") or (top and n in _NOT_SOURCE_TOP)}


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, (
        f"{cmd} exited {p.returncode}\n--- stdout\n{p.stdout[-4000:]}\n--- stderr\n{p.stderr[-4000:]}"
    )
    return p


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_repo(tmp_path):
    t0 = time.perf_counter()
    venv, elsewhere = tmp_path / "venv", tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PYTHONNOUSERSITE")
    }
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["MPLCONFIGDIR"] = str(tmp_path / "mpl")
    # pip's cache (PIP_CACHE_DIR, else pip's default) keeps what pip downloads or builds for a re-run;
    # an empty or missing one only costs time.
    env.pop("PIP_NO_CACHE_DIR", None)

    # 1. The wheel, built from a clean copy of the source tree (the repo itself is not written to).
    src, wheels = tmp_path / "src", tmp_path / "wheels"
    shutil.copytree(REPO, src, ignore=_ignore)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(src)], tmp_path, env)
    (wheel,) = wheels.glob("nfdeploy-*.whl")

    # 2. A fresh venv (no system site-packages), the wheel with its onnx extra.
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path, env)
    py, exe = venv / "bin" / "python", venv / "bin" / "nfdeploy"
    # --no-compile: byte-compiling all of torch would take ~40 s; what runs compiles on first import.
    _run([str(py), "-m", "pip", "install", "-q", "--no-compile", f"{wheel}[onnx]"], tmp_path, env)
    t_install = time.perf_counter() - t0

    # 3. The installed package is the one imported, not the repo's.
    where = Path(_run([str(py), "-c", "import nfdeploy; print(nfdeploy.__file__)"], elsewhere, env).stdout.strip())
    assert where.resolve().is_relative_to(venv.resolve()), where
    assert "site-packages" in where.parts, where
    assert not where.resolve().is_relative_to(REPO), where

    # 4. The CLI and the bundled recipes (package data) work.
    assert "Usage" in _run([str(exe), "--help"], elsewhere, env).stdout
    recipes = _run([str(py), "-c", "from nfdeploy.config import list_recipes; print(list_recipes())"], elsewhere, env)
    assert "nf_digits" in recipes.stdout

    # 5. Train the default recipe (scikit-learn's bundled digits) and export it, from elsewhere.
    _run([str(exe), "train", "--epochs", "1", "--out", "run", "--no-progress"], elsewhere, env)
    assert (elsewhere / "run" / "weights.safetensors").is_file()
    _run([str(exe), "export", "run", "--out", "exp", "--precision", "fp32"], elsewhere, env)
    assert (elsewhere / "exp" / "model.onnx").is_file()
    manifest = json.loads((elsewhere / "exp" / "manifest.json").read_text())
    assert manifest["checks"]["fp32"]["status"] == "pass", manifest["checks"]

    print(f"wheel test: build + venv + install {t_install:.1f} s, total {time.perf_counter() - t0:.1f} s")
