"""The package's import graph, read statically: no cycles, no import from a higher floor, no private
name imported across modules. The floor order is written down once, here (docs/design.md explains it).

A module imports only from floors below its own, or from its own floor without a cycle. Lazy imports
inside functions count the same as top-level ones: a floor that is crossed lazily is still crossed.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "nfdeploy"

# Module or package path below nfdeploy → its floor (0 = the bottom). The longest matching prefix
# decides: "check.isa" sits low enough for the runtimes (with the parity options its child process takes), the
# rest of "check" above them.
# fmt: off
FLOORS: dict[str, int] = {
    "errors": 0, "status": 0,
    "check.isa": 1, "precision": 1, "artifacts": 1, "metrics": 1, "render": 1, "machine": 1, "nn": 1, "data": 1,
    "check.parity_options": 1, "preprocess": 1,
    "models": 2, "check.model_points": 2,
    "config": 3, "fold": 3, "models.spp": 3, "artifacts.run_dir": 3,
    "train": 4, "interop": 4,
    "runtime": 5,
    "export": 6,
    "check": 7, "perf": 7,
    "workflow": 8, "serve": 8, "evidence": 8, "cli": 8, "__main__": 8,
    "__init__": 0,  # the top package: __version__ only, imports nothing of nfdeploy
}
# fmt: on
# nfdeploy's root holds the floor-1 basics and the entry points; everything else lives in a package.
MAX_ROOT_MODULES = 12


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[str, list[str], int]]:
    """(imported nfdeploy module, imported names, line) for every import statement, lazy ones too."""
    tree = ast.parse(path.read_text(), filename=str(path))
    me = module_name(path).split(".")
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "nfdeploy"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = me if is_pkg else me[:-1]
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] == "nfdeploy":
                out.append((mod, [a.name for a in node.names], node.lineno))
    return out


def resolve(mod: str, names: list[str], known: set[str]) -> list[str]:
    """`from nfdeploy.x import y` imports module nfdeploy.x.y when that is a module, else names of nfdeploy.x."""
    subs = [f"{mod}.{n}" for n in names if f"{mod}.{n}" in known]
    return subs if subs and len(subs) == len(names) else [mod] + subs


def floor_of(mod: str) -> int:
    parts = mod.split(".")[1:] or ["__init__"]
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in FLOORS:
            return FLOORS[key]
    raise AssertionError(f"module {mod} has no floor: add its name to FLOORS in {__file__}")


def graph() -> tuple[dict[str, set[str]], list[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    known = {module_name(f) for f in files}
    edges: dict[str, set[str]] = {m: set() for m in known}
    problems = []
    for f in files:
        me = module_name(f)
        for mod, names, line in imports_of(f):
            for target in resolve(mod, names, known):
                if target not in known:
                    problems.append(f"{me}:{line} imports {target}, which does not exist")
                    continue
                if target != me:
                    edges[me].add(target)
                if me != "nfdeploy" and floor_of(target) > floor_of(me) and not target.startswith(me + "."):
                    problems.append(f"{me}:{line} (floor {floor_of(me)}) imports {target} (floor {floor_of(target)})")
            private = [n for n in names if n.startswith("_") and f"{mod}.{n}" not in known]
            if private and mod != me:
                problems.append(f"{me}:{line} imports private name(s) {private} from {mod}")
    return edges, problems


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A package imports its own submodules by design (re-exports); only cycles between sibling modules,
    or a submodule importing its package's __init__ that imports it back, count."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if not state.get(m):
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(edges):
        if not state.get(n):
            found = visit(n)
            if found:
                return found
    return None


def test_every_module_has_a_floor():
    for f in PACKAGE.rglob("*.py"):
        floor_of(module_name(f))


def test_the_root_holds_at_most_a_dozen_modules():
    root = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert len(root) <= MAX_ROOT_MODULES, root


def test_no_upward_import_and_no_private_name_across_modules():
    _, problems = graph()
    assert not problems, "\n".join(problems)


def test_no_import_cycle():
    edges, _ = graph()
    # The top package's __init__ imports nothing of nfdeploy; a subpackage's __init__ re-exports its
    # submodules, and those import the subpackage's siblings, not the __init__, so edges stay acyclic.
    cycle = find_cycle(edges)
    assert cycle is None, " -> ".join(cycle)


def test_the_checker_catches_what_it_claims(tmp_path, monkeypatch):
    """An upward import, a cycle and a private import planted in a copy of the package are all reported."""
    import shutil

    copy = tmp_path / "nfdeploy"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    with open(copy / "artifacts.py", "a") as f:  # floor 1 reaching up to floor 7, lazily
        f.write("\n\ndef _late():\n    from nfdeploy.check.parity import parity_report  # noqa\n")
    with open(copy / "metrics.py", "a") as f:  # a private name across modules
        f.write("\nfrom nfdeploy.errors import _nothing  # noqa\n")
    with open(copy / "errors.py", "a") as f:  # errors <-> metrics: a cycle (and an upward import)
        f.write("\nimport nfdeploy.metrics  # noqa\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", copy)
    edges, problems = graph()
    text = "\n".join(problems)
    assert "nfdeploy.artifacts" in text and "imports nfdeploy.check.parity (floor 7)" in text
    assert "private name(s) ['_nothing']" in text
    assert "nfdeploy.errors" in text and "imports nfdeploy.metrics (floor 1)" in text
    edges["nfdeploy.artifacts"].discard("nfdeploy.check.parity")  # that plant closes a cycle of its own
    cycle = find_cycle(edges)
    assert cycle is not None and {"nfdeploy.errors", "nfdeploy.metrics"} <= set(cycle)
