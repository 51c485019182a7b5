"""Verdict codes are one closed enumeration (``engines.codes``): the README lists exactly those codes, the error
and record types refuse any other, and a scan of the source finds no literal code outside it."""

from __future__ import annotations

import ast
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from deepsift.daemon.db import make_database, upgrade_database
from deepsift.daemon.records import EngineIdentity, VerdictRecord
from deepsift.daemon.repository import VerdictRepository
from deepsift.daemon.stream.jobs import InvalidJob
from deepsift.engines.codes import CODES, VerdictCode
from deepsift.engines.errors import MediaError, PermanentError

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("engines", "daemon", "trainer")
ENGINE = EngineIdentity("sd2-vit-tiny", 1, "ab" * 32)
ERROR_CODES = [code for code, info in CODES.items() if info.status == "error"]


def _record(status: str, code: str | None, job_id: str = "job-1") -> VerdictRecord:
    return VerdictRecord(job_id=job_id, source="scan", media_uri="file:///m/1.mp4", status=status,  # type: ignore[arg-type]
                         engine=ENGINE, code=code, detail="why" if code else None)  # fmt: skip


# --- the enumeration and the README ------------------------------------------------------------------------------


def _readme_rows() -> list[tuple[str, str, str]]:
    """(code, status, group) of each row of the README's "Verdict codes" table."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    _, found, rest = text.partition("\n### Verdict codes\n")
    assert found, 'README.md has no "### Verdict codes" section'
    section = re.split(r"\n#{1,6} ", rest, maxsplit=1)[0]
    rows = []
    for line in section.splitlines():
        if line.startswith("| `"):
            code, status, group = (cell.strip().strip("`") for cell in line.strip("|").split("|")[:3])
            rows.append((code, status, group))
    return rows


def test_every_code_has_one_status_group_and_meaning() -> None:
    assert list(CODES) == list(VerdictCode)
    assert all(info.status in ("abstained", "error") and info.group and info.meaning for info in CODES.values())


def test_the_readme_lists_exactly_the_codes_with_their_status() -> None:
    # Given the README's table and the enumeration
    rows = _readme_rows()
    # Then each code appears once, with the same status and group
    assert [code for code, n in Counter(code for code, _, _ in rows).items() if n > 1] == []
    assert {code: (status, group) for code, status, group in rows} == {
        code.value: (info.status, info.group) for code, info in CODES.items()
    }


# --- enforcement at construction ---------------------------------------------------------------------------------


@pytest.mark.parametrize("code", ERROR_CODES)
def test_permanent_errors_take_every_error_code(code: VerdictCode) -> None:
    assert MediaError(code.value, "why").code == code
    assert PermanentError(code, "why").code == code


@pytest.mark.parametrize("code", ["no_such_code", "CORRUPT_MEDIA", "", "no_face"])
def test_permanent_errors_refuse_a_code_outside_the_error_codes(code: str) -> None:
    with pytest.raises(ValueError, match=repr(code)):
        MediaError(code, "why")


def test_permanent_errors_refuse_a_code_that_is_not_text() -> None:
    with pytest.raises(TypeError):
        PermanentError(None, "why")  # type: ignore[arg-type]


def test_an_invalid_job_still_carries_its_code() -> None:
    assert InvalidJob("the message has no value").code == VerdictCode.INVALID_JOB


@pytest.mark.parametrize("code", list(VerdictCode))
def test_verdict_records_take_every_code_with_its_status(code: VerdictCode) -> None:
    assert _record(CODES[code].status, code.value).code == code
    assert _record(CODES[code].status, code).code == code


@pytest.mark.parametrize(
    ("status", "code"),
    [("error", "no_such_code"), ("ok", "no_such_code"), ("error", "no_face"), ("abstained", "corrupt_media")],
)
def test_verdict_records_refuse_an_unknown_code_or_one_of_another_status(status: str, code: str) -> None:
    with pytest.raises(ValueError, match=repr(code)):
        _record(status, code)


def test_every_code_is_stored_and_read_back(tmp_path: Path) -> None:
    # Given a migrated SQLite database and one verdict per code, given as the enum member
    url = f"sqlite:///{tmp_path / 'deepsift.db'}"
    upgrade_database(url)
    engine = make_database(url)
    try:
        repository = VerdictRepository(engine)
        # When each is saved and read back (the row is rebuilt into a VerdictRecord, which checks its code)
        saved = {code: repository.save(_record(CODES[code].status, code, f"job-{code}")).id for code in VerdictCode}
        loaded = {code: repository.get(verdict_id).code for code, verdict_id in saved.items()}
    finally:
        engine.dispose()
    # Then every code comes back as the same text
    assert loaded == {code: code.value for code in VerdictCode}


# --- the source names no code outside the enumeration ------------------------------------------------------------


@dataclass(frozen=True)
class CodeSite:
    where: str  # path:line
    code: str
    status: str | None  # the status the site gives the code, when it says


_Function = ast.FunctionDef | ast.AsyncFunctionDef


class _Module:
    """One parsed module, with its module-level assignments and functions (where names and calls are followed)."""

    def __init__(self, path: str, tree: ast.Module) -> None:
        self.path, self.tree = path, tree
        self.assigned = _assignments(tree.body)
        self.functions = {n.name: n for n in tree.body if isinstance(n, _Function)}


_Scope = tuple[_Module, _Function | None]  # where a name is looked up: the function, then the module


def _assignments(body: list[ast.stmt]) -> dict[str, list[ast.expr]]:
    """The values assigned to each plain name by the statements of ``body`` (not nested functions or classes)."""
    found: dict[str, list[ast.expr]] = {}
    stack = list(body)
    while stack:
        node = stack.pop()
        if isinstance(node, _Function | ast.ClassDef | ast.Lambda):
            continue
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found.setdefault(target.id, []).append(node.value)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            found.setdefault(node.target.id, []).append(node.value)
        stack.extend(ast.iter_child_nodes(node))
    return found


class CodeScan:
    """The string codes the source hands to the places that make verdict codes, and where.

    Sites: the argument for a parameter or dataclass field named ``code`` of a function or class defined in the
    scanned source, by position (a class without its own ``__init__`` takes its bases', so ``MediaError(code, …)``
    counts, ``InvalidJob(detail)`` does not) or through a subclass's ``super().__init__``, paired with status
    ``error`` for the ``PermanentError`` family; any ``code=`` keyword, paired with a literal ``status=`` beside it;
    the second item of a ``("error" | "abstained", code, detail)`` tuple; a string compared with ``code``.
    Values are followed through string literals, ``a if c else b``, names assigned in the same function or at
    module level, ``DICT.get(key, default)`` and ``DICT[key]`` on a module-level dict, the returns of a function
    of the same module, and a ``*args`` whose tuples hold the code first. Not followed: attributes (``e.code``),
    parameters, tuple unpacking, ``or`` fallbacks, context managers, calls into other modules; those codes are
    only checked at run time, by ``PermanentError`` and ``VerdictRecord``.
    """

    def __init__(self, sources: dict[str, str]) -> None:
        self.modules = [_Module(path, ast.parse(text, path)) for path, text in sources.items()]
        classes = [n for m in self.modules for n in ast.walk(m.tree) if isinstance(n, ast.ClassDef)]
        self.family = _permanent_family(classes)
        self.bases = _bases(classes)
        self.code_index = _code_parameters(self.modules, classes)
        self.sites: list[CodeSite] = []
        for module in self.modules:
            self._visit(module, module.tree, None, None)

    def _visit(self, module: _Module, node: ast.AST, function: _Function | None, klass: str | None) -> None:
        if isinstance(node, _Function):
            function = node
        elif isinstance(node, ast.ClassDef):
            klass = node.name
        scope = (module, function)
        if isinstance(node, ast.Call):
            self._call(node, scope, klass)
        elif isinstance(node, ast.Tuple) and len(node.elts) == 3:
            status = node.elts[0]
            if isinstance(status, ast.Constant) and status.value in ("error", "abstained"):
                self._add(node.elts[1], scope, status.value)
        elif isinstance(node, ast.Compare) and _base_name(node.left) == "code":
            for right in node.comparators:
                self._add(right, scope, None, containers=True)
        for child in ast.iter_child_nodes(node):
            self._visit(module, child, function, klass)

    def _call(self, call: ast.Call, scope: _Scope, klass: str | None) -> None:
        name = _qualified_name(call.func)
        if name not in self.code_index and name not in self.family:
            name = _base_name(call.func)  # ``errors.MediaError(...)``: the class by its own name
        status = next((_constant(k.value) for k in call.keywords if k.arg == "status"), None)
        if name == "__init__" and _is_super(call) and klass is not None:  # the code a subclass passes on
            name, indexes = klass, set().union(*(self.code_index.get(b, set()) for b in self.bases.get(klass, [])))
        else:
            indexes = self.code_index.get(name or "", set())
        if name in self.family:
            status = "error"
        for index in indexes:
            if index < len(call.args) and not any(isinstance(a, ast.Starred) for a in call.args[:index]):
                argument = call.args[index]
                if isinstance(argument, ast.Starred):
                    for leaf in _leaves(argument.value, scope):
                        if isinstance(leaf, ast.Tuple) and leaf.elts:
                            self._add(leaf.elts[0], scope, status)
                else:
                    self._add(argument, scope, status)
        for keyword in call.keywords:
            if keyword.arg == "code":
                self._add(keyword.value, scope, status)

    def _add(self, node: ast.expr, scope: _Scope, status: str | None, containers: bool = False) -> None:
        for leaf in _leaves(node, scope):
            values = leaf.elts if containers and isinstance(leaf, ast.Tuple | ast.List | ast.Set) else [leaf]
            for value in values:
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    self.sites.append(CodeSite(f"{scope[0].path}:{value.lineno}", value.value, status))


def _permanent_family(classes: list[ast.ClassDef]) -> set[str]:
    family = {"PermanentError"}
    while True:
        grown = family | {c.name for c in classes if any(_base_name(b) in family for b in c.bases)}
        if grown == family:
            return family
        family = grown


def _code_parameters(modules: list[_Module], classes: list[ast.ClassDef]) -> dict[str, set[int]]:
    """Where the ``code`` goes among the positional arguments of each function and class of the scanned source; a
    class without its own ``__init__`` (or dataclass fields) takes its bases' (``MediaError`` takes
    ``PermanentError``'s, ``InvalidJob(detail)`` has none)."""
    index: dict[str, set[int]] = {}
    methods = {id(m): f"{c.name}.{m.name}" for c in classes for m in c.body if isinstance(m, _Function)}
    for module in modules:
        for node in ast.walk(module.tree):
            if isinstance(node, _Function) and node.name != "__init__":
                names = [a.arg for a in node.args.posonlyargs + node.args.args if a.arg not in ("self", "cls")]
                if "code" in names:  # a method by its class (``Outcome.error``), not every ``.error(...)`` call
                    index.setdefault(methods.get(id(node), node.name), set()).add(names.index("code"))
    own = {c.name: _own_parameters(c) for c in classes}
    bases = _bases(classes)

    def class_index(name: str, seen: frozenset[str] = frozenset()) -> set[int]:
        names = own.get(name)
        if names is not None:
            return {names.index("code")} if "code" in names else set()
        inherited = [class_index(base, seen | {name}) for base in bases.get(name, []) if base not in seen]
        return set().union(*inherited)

    for name in own:
        index.setdefault(name, set()).update(class_index(name))
    return index


def _own_parameters(c: ast.ClassDef) -> list[str] | None:
    """The positional parameters of the class's own ``__init__`` or dataclass fields; None when it has neither."""
    init = next((n for n in c.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
    if init is not None:
        return [a.arg for a in init.args.args[1:]]
    if any(_base_name(d.func if isinstance(d, ast.Call) else d) == "dataclass" for d in c.decorator_list):
        return [s.target.id for s in c.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)]
    return None


def _bases(classes: list[ast.ClassDef]) -> dict[str, list[str]]:
    return {c.name: [name for name in map(_base_name, c.bases) if name] for c in classes}


def _leaves(node: ast.expr, scope: _Scope, depth: int = 0) -> Iterator[ast.expr]:
    """The expressions ``node`` may evaluate to, following names, conditionals, dict look-ups and local calls."""
    module, function = scope
    if depth > 6:
        return
    if isinstance(node, ast.IfExp):
        yield from _leaves(node.body, scope, depth + 1)
        yield from _leaves(node.orelse, scope, depth + 1)
    elif isinstance(node, ast.Name):
        local = _assignments(function.body).get(node.id) if function is not None else None  # type: ignore[attr-defined]
        for value in local or module.assigned.get(node.id, []):
            yield from _leaves(value, (module, function if local else None), depth + 1)
    elif isinstance(node, ast.Call) and _dict_get(node):
        yield from _dict_values(node.func.value, module, depth)  # type: ignore[attr-defined]
        if len(node.args) > 1:
            yield from _leaves(node.args[1], scope, depth + 1)
    elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
        yield from _dict_values(node.value, module, depth)
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in module.functions:
        returned = module.functions[node.func.id]
        for statement in ast.walk(returned):
            if isinstance(statement, ast.Return) and statement.value is not None:
                yield from _leaves(statement.value, (module, returned), depth + 1)
    else:
        yield node


def _dict_values(name: ast.expr, module: _Module, depth: int) -> Iterator[ast.expr]:
    for value in module.assigned.get(getattr(name, "id", ""), []):
        if isinstance(value, ast.Dict):
            for item in value.values:
                yield from _leaves(item, (module, None), depth + 1)


def _dict_get(call: ast.Call) -> bool:
    func = call.func
    return isinstance(func, ast.Attribute) and func.attr == "get" and isinstance(func.value, ast.Name)


def _qualified_name(node: ast.expr) -> str | None:
    """``Owner.method`` for a call on a name (``Outcome.error``), else the plain name."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return f"{node.value.id}.{node.attr}"
    return _base_name(node)


def _base_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    return node.attr if isinstance(node, ast.Attribute) else None


def _is_super(call: ast.Call) -> bool:
    owner = getattr(call.func, "value", None)
    return isinstance(owner, ast.Call) and _base_name(owner.func) == "super"


def _constant(node: ast.expr) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _package_sources() -> dict[str, str]:
    return {
        str(path.relative_to(ROOT)): path.read_text(encoding="utf-8")
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def _problems(sites: list[CodeSite]) -> list[str]:
    known = {code.value: info.status for code, info in CODES.items()}
    unknown = [f"{s.where}: {s.code!r} is not a VerdictCode" for s in sites if s.code not in known]
    mismatched = [
        f"{s.where}: {s.code!r} goes with status {known[s.code]}, not {s.status}"
        for s in sites
        if s.code in known and s.status is not None and s.status != known[s.code]
    ]
    return unknown + mismatched


def test_the_source_hands_out_only_listed_codes_with_their_status() -> None:
    # Given every module of the three packages
    sources = _package_sources()
    assert {path.split("/")[0] for path in sources} == set(PACKAGES)
    # When the code sites are collected
    sites = CodeScan(sources).sites
    # Then it finds every listed code but the one that arrives through a context manager (not followed), so the
    # scan reads what it should and no listed code is dead; and each code found is listed, with its status
    assert {code.value for code in VerdictCode} - {s.code for s in sites} == {"poison_job"}
    assert _problems(sites) == []


HOSTILE_SOURCE = """
from dataclasses import dataclass

from deepsift.engines.errors import MediaError, PermanentError

FALLBACK = "bogus_constant"
_BY_ERRNO = {1: "bogus_dict_value"}


class OddError(MediaError):
    pass


class FixedError(PermanentError):
    def __init__(self, detail):
        super().__init__("bogus_super", detail)


@dataclass(frozen=True)
class Problem:
    detail: str
    code: str


def helper(record, code, detail):
    return record


def refusal():
    return "bogus_return", "why"


def sites(record, error):
    code = "bogus_local" if error else "corrupt_media"
    MediaError(code, "why")
    OddError("bogus_subclass", "why")
    helper(record, FALLBACK, "why")
    Problem("why", _BY_ERRNO.get(error, "bogus_default"))
    refused = refusal()
    helper(record, *refused)
    outcome = ("abstained", "corrupt_media", "why")
    record.replace(status="error", code="bogus_keyword")
    return code == "bogus_compare", outcome
"""


def test_the_scan_finds_an_unlisted_code_at_each_kind_of_site() -> None:
    # Given a module that hands out unlisted codes, and a listed code with the wrong status, in every way the scan
    # follows (the errors module is scanned too, so the family of PermanentError is known)
    sources = {
        "engines/errors.py": (ROOT / "engines/errors.py").read_text(encoding="utf-8"),
        "hostile.py": HOSTILE_SOURCE,
    }
    # When it is scanned
    problems = _problems(CodeScan(sources).sites)
    # Then each is reported
    expected = ["bogus_constant", "bogus_dict_value", "bogus_super", "bogus_return", "bogus_local", "bogus_subclass",
                "bogus_default", "bogus_keyword", "bogus_compare"]  # fmt: skip
    for code in expected:
        assert any(f"{code!r} is not a VerdictCode" in p for p in problems), code
    assert any("'corrupt_media' goes with status error, not abstained" in p for p in problems)
    assert len(problems) == len(expected) + 1
