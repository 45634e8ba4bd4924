"""The package's shape is checked, not hoped for: the import layers and the llama_cpp
boundary (import-linter, contracts in pyproject.toml), lint (ruff), module and function sizes,
and no private names imported across modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "ropepatch"
BIN = Path(sys.executable).parent

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60

#: functions allowed past MAX_FUNCTION_LINES ("module:qualname": why)
LONG_FUNCTIONS: dict[str, str] = {}


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _tool(name: str, *args: str) -> subprocess.CompletedProcess:
    exe = BIN / name
    if not exe.exists():
        pytest.fail(f"{name} is not installed next to {sys.executable}: pip install -e '.[test]'", pytrace=False)
    return subprocess.run([str(exe), *args], cwd=ROOT, capture_output=True, text=True)


def test_import_contracts():
    """Layers import down only; only ropepatch.runtime imports llama_cpp."""
    r = _tool("lint-imports", "--no-cache", "--no-logo")
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff():
    r = _tool("ruff", "check", "--no-cache", "ropepatch", "tools", "tests")
    assert r.returncode == 0, r.stdout + r.stderr


def test_modules_are_small():
    big = {_name(p): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not big, f"modules over {MAX_MODULE_LINES} lines: {big}"


def _functions(tree: ast.AST, prefix: str = ""):
    """(qualname, node) of every function, methods and nested functions included."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + node.name, node
            yield from _functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}{node.name}.")
        else:
            yield from _functions(node, prefix)


def test_functions_are_short():
    long, seen = {}, set()
    for path in _modules():
        for qualname, node in _functions(ast.parse(path.read_text())):
            key = f"{_name(path)}:{qualname}"
            n = node.end_lineno - node.lineno + 1
            if n > MAX_FUNCTION_LINES:
                seen.add(key)
                if key not in LONG_FUNCTIONS:
                    long[key] = n
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"
    stale = set(LONG_FUNCTIONS) - seen
    assert not stale, f"LONG_FUNCTIONS entries no longer needed: {sorted(stale)}"


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            yield node


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_no_private_names_imported_across_modules():
    bad = []
    for path in _modules():
        me = _name(path)
        for node in _imports(path):
            mod = node.module or ""
            if node.level or not mod.startswith("ropepatch") or mod == me:
                continue
            bad += [f"{me}:{node.lineno}: from {mod} import {a.name}" for a in node.names if _is_private(a.name)]
            bad += [f"{me}:{node.lineno}: from {mod}" for part in mod.split(".") if _is_private(part)]
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


def test_imports_are_absolute_and_skip_the_lazy_api():
    """``from ropepatch.x.y import name``: no relative imports, and nothing inside the package
    goes through the lazy top-level API (``from ropepatch import inspect_gguf``)."""
    bad = []
    for path in _modules():
        me = _name(path)
        for node in _imports(path):
            if node.level:
                bad.append(f"{me}:{node.lineno}: relative import")
            elif node.module == "ropepatch" and any(a.name != "__version__" for a in node.names):
                bad.append(f"{me}:{node.lineno}: from ropepatch import {', '.join(a.name for a in node.names)}")
    assert not bad, "\n".join(bad)
