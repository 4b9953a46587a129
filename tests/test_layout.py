"""The shape a newcomer can carry, read statically: short functions, one name per thing, bench scripts that only
call the library and run from anywhere, and tests that do not import them."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "nfdeploy"
BENCH = REPO / "bench"
MAX_FUNCTION_LINES = 80  # docstring and decorators included
# What a bench script must not hold of its own (the library has each): timing loops, runtime sessions, statistics,
# atomic writes, hand-written manifests.
BENCH_FORBIDDEN = ("perf_counter", "InferenceSession(", "SessionOptions(", "os.replace(", "mkstemp(", "percentile(",
                   "import statistics", '"manifest.json"', "sys.path")  # fmt: skip


def _py(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def function_lengths(root: Path) -> list[tuple[int, str]]:
    """(lines from the first decorator to the last line, 'file:line name') of every function under root (a folder of
    the repository, or any other)."""
    rows = []
    for f in _py(root):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                where = f.relative_to(REPO) if f.is_relative_to(REPO) else f
                rows.append((node.end_lineno - start + 1, f"{where}:{node.lineno} {node.name}"))
    return sorted(rows, reverse=True)


def test_no_function_in_the_package_is_longer_than_80_lines():
    long = [f"{n} lines: {where}" for n, where in function_lengths(PACKAGE) if n > MAX_FUNCTION_LINES]
    assert not long, "\n".join(long)


def test_one_name_per_thing():
    """No two modules share a name, and no public top-level function or class is defined twice (the CLI's commands
    are named after the library call they make)."""
    modules: dict[str, list[str]] = defaultdict(list)
    names: dict[str, list[str]] = defaultdict(list)
    for f in _py(PACKAGE):
        if f.stem not in ("__init__", "__main__"):
            modules[f.stem].append(str(f.relative_to(REPO)))
        if f.relative_to(PACKAGE).parts[0] == "cli":  # a command is named after the library call it makes
            continue
        for node in ast.parse(f.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                names[node.name].append(str(f.relative_to(REPO)))
    clashes = {k: v for k, v in {**modules, **names}.items() if len(v) > 1}
    assert not clashes, clashes


def test_the_checker_finds_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "m.py").write_text(f"@staticmethod\ndef f():\n{body}\n")
    assert function_lengths(tmp_path)[0][0] == MAX_FUNCTION_LINES + 2


def bench_scripts() -> list[Path]:
    return [p for p in _py(BENCH) if p.name != "__init__.py"]


def test_bench_scripts_hold_no_library_code_of_their_own():
    found = [
        f"{p.relative_to(REPO)}: {word}" for p in bench_scripts() for word in BENCH_FORBIDDEN if word in p.read_text()
    ]
    assert not found, "\n".join(found)


def test_bench_scripts_use_only_the_librarys_public_names():
    found = []
    for p in bench_scripts():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("nfdeploy"):
                found += [f"{p.name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                if isinstance(node.value, ast.Name) and node.value.id in _nfdeploy_aliases(p):
                    found.append(f"{p.name}: {node.value.id}.{node.attr}")
    assert not found, found


def _nfdeploy_aliases(p: Path) -> set[str]:
    """Names a script binds to nfdeploy modules (`from nfdeploy.export import quantize as q`: q)."""
    names = set()
    for node in ast.walk(ast.parse(p.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("nfdeploy"):
            names |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names if a.name.startswith("nfdeploy")}
    return names


def test_no_test_imports_a_bench_script():
    found = []
    for f in _py(REPO / "tests"):
        for node in ast.walk(ast.parse(f.read_text())):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            mods += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [f"{f.name}: {m}" for m in mods if m == "bench" or m.startswith("bench.")]
    assert not found, found


@pytest.mark.slow
@pytest.mark.parametrize("where", ["repo", "elsewhere"])
def test_every_bench_script_answers_help_from_any_directory(tmp_path, where):
    """`python -m bench.NAME --help` from the repository root, `python /path/bench/NAME.py --help` from another
    directory: both work without the script editing sys.path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH")]))}
    failed = []
    for p in bench_scripts():
        if where == "repo":
            mod = ".".join(p.relative_to(REPO).with_suffix("").parts)
            cmd, cwd = [sys.executable, "-m", mod, "--help"], REPO
        else:
            cmd, cwd = [sys.executable, str(p), "--help"], tmp_path
        r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
        if r.returncode != 0 or "usage" not in r.stdout.lower():
            failed.append(f"{' '.join(cmd[1:])} (in {cwd}): exit {r.returncode}: {r.stderr.strip()[-300:]}")
    assert not failed, "\n".join(failed)
