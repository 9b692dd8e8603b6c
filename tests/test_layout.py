"""The package's shape: no import cycles (imports inside functions included), training and
evaluation importable without each other, short functions, and docs that match the tree."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "seguncert"
ORCHESTRATION = ("train", "evaluate", "inference", "io", "runtime", "cli")
SYNTHETIC_RENDERER = ("synthetic.py", "synthetic_objects.py", "synthetic_raster.py",
                      "synthetic_scene.py", "synthetic_shifts.py")  # fmt: skip


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every seguncert module ``name`` imports, at any depth of its code."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # "from pkg import mod" imports pkg.mod when that is a module
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]  # fmt: skip
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    return {n: imports_of(n, p, set(mods)) for n, p in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state and (cycle := visit(m)):
                return cycle
        state[n] = 2
        stack.pop()
        return None

    for n in sorted(graph):
        if n not in state and (cycle := visit(n)):
            return cycle
    return None


def test_no_import_cycle_inside_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize(
    "room, other",
    [
        ("seguncert.train.fit", "seguncert.evaluate"),
        ("seguncert.evaluate.run", "seguncert.train"),
    ],  # fmt: skip
)
def test_training_and_evaluation_import_on_their_own(room, other):
    code = f"import sys, {room}; print(sorted(m for m in sys.modules if m.startswith('{other}')))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", f"{room} pulls in {r.stdout.strip()}"


def functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.end_lineno - node.lineno + 1


def test_functions_are_short_and_orchestration_modules_small():
    long = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        orchestration = rel.parts[0] in ORCHESTRATION
        if path.name in SYNTHETIC_RENDERER:
            continue
        limit = 60 if orchestration else 80
        long += [f"{rel}:{n} ({k} lines)" for n, k in functions(path) if k > limit]
        if orchestration and path.read_text().count("\n") > 320:
            long.append(f"{rel} ({path.read_text().count(chr(10))} lines)")
    assert not long, long


def test_architecture_doc_names_existing_folders_and_modules():
    doc = (REPO / "docs" / "architecture.md").read_text()
    block = doc.split("```")[1]  # the layout tree
    folders = re.findall(r"^\s{2}(\w+)/", block, flags=re.M)
    assert {"train", "evaluate", "io", "inference", "cli"} <= set(folders)
    for f in folders:
        assert (PACKAGE / f).is_dir(), f"docs/architecture.md names seguncert/{f}/"
    for f in re.findall(r"\b([a-z_]+\.py)\b", block):
        assert list(PACKAGE.rglob(f)) or (REPO / "tools" / f).exists(), f
    for package in (p for p in PACKAGE.iterdir() if (p / "__init__.py").exists()):
        assert f"  {package.name}/" in block, f"seguncert/{package.name}/ missing from the doc"
    assert "../shared" not in doc and (REPO / "docs" / "method.md").is_file()
