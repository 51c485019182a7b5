"""The code's shape, checked: no import cycles between modules, kafka-python only at the Kafka edge
(``daemon/broker``), ``daemon scan`` importing no Kafka at all, and modules and functions a reader can hold."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"daemon": "deepsift.daemon", "engines": "deepsift.engines", "trainer": "deepsift.trainer"}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
# Written down with their reason, so the limits stay a rule and not a wish.
LONG_FUNCTIONS = {
    # one straight recipe of a synthetic forgery dataset (sizes, splits, labels, writes), read top to bottom
    ("trainer/synthetic.py", "write_forgery_dataset"),
}


def _modules() -> dict[str, Path]:
    modules = {}
    for folder, name in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = [p for p in path.relative_to(ROOT / folder).with_suffix("").parts if p != "__init__"]
            modules[".".join([name, *parts])] = path
    return modules


def _top_level_imports(tree: ast.Module) -> list[str]:
    """What a module imports when it is imported (not inside functions, not under ``TYPE_CHECKING``)."""
    names = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def _all_imports(tree: ast.Module) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_two_modules_import_each_other_at_import_time():
    modules = _modules()
    graph = {
        name: {imported for imported in _top_level_imports(ast.parse(path.read_text())) if imported in modules} - {name}
        for name, path in modules.items()
    }
    assert _cycles(graph) == []


def test_kafka_python_is_imported_only_by_the_kafka_edge():
    edge = ROOT / "daemon" / "broker"
    importers = sorted(
        str(path.relative_to(ROOT))
        for folder in PACKAGES
        for path in (ROOT / folder).rglob("*.py")
        if edge not in path.parents
        and any(name == "kafka" or name.startswith("kafka.") for name in _all_imports(ast.parse(path.read_text())))
    )
    assert importers == []


def test_scanning_imports_no_kafka_client():
    code = (
        "import sys\n"
        "import deepsift.daemon.cli, deepsift.daemon.compose, deepsift.daemon.scan, deepsift.daemon.sources.files\n"
        "print(sorted(m for m in sys.modules if m == 'kafka' or m.startswith('kafka.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("folder", sorted(PACKAGES))
def test_modules_and_functions_stay_small_enough_to_read(folder):
    too_long_modules, too_long_functions = [], []
    for path in sorted((ROOT / folder).rglob("*.py")):
        source = path.read_text()
        relative = str(path.relative_to(ROOT))
        if source.count("\n") > MAX_MODULE_LINES:
            too_long_modules.append((relative, source.count("\n")))
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES and (relative, node.name) not in LONG_FUNCTIONS:
                    too_long_functions.append((relative, node.name, lines))
    assert too_long_modules == []
    assert too_long_functions == []


def test_every_package_folder_is_in_the_distribution():
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {**PACKAGES, "alembic": "deepsift.migrations"}
    found = {
        ".".join([name, *init.parent.relative_to(ROOT / folder).parts])
        for folder, name in folders.items()
        for init in (ROOT / folder).rglob("__init__.py")
    }
    assert found - listed == set()
