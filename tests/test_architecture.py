"""Architecture guards over ``pyramid_examcache/``: each test counts one kind of violation and
asserts there are none, listing every ``file:line`` it found so a failure says what to fix.

* no code objects (``__code__``), no fault-injection hooks in shipped code (``EXAMCACHE_FAULT``),
  no ``is_tm_active``;
* public APIs only: no private names imported from Pyramid or ``transaction`` (nor
  ``transaction._transaction``, nor a transaction manager's ``_txn``), and no ``x._private``
  attribute access on anything but ``self``/``cls``/``super()``;
* module docstrings of at most 40 lines, functions of at most 60 lines (the long arguments live in
  ``docs/design/*.md``);
* no issue numbers in code, comments or docstrings.
"""
from __future__ import annotations

import ast
import io
import pathlib
import re
import tokenize

import pytest

import pyramid_examcache

PACKAGE = pathlib.Path(pyramid_examcache.__file__).resolve().parent
ROOT = PACKAGE.parent
MAX_MODULE_DOCSTRING_LINES = 40
MAX_FUNCTION_LINES = 60


def sources() -> list[pathlib.Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def where(path: pathlib.Path, line: int, what: str) -> str:
    return f"{path.relative_to(ROOT)}:{line}: {what}"


def parsed() -> list[tuple[pathlib.Path, str, ast.Module]]:
    out = []
    for path in sources():
        text = path.read_text(encoding="utf-8")
        out.append((path, text, ast.parse(text, filename=str(path))))
    return out


@pytest.fixture(scope="module")
def modules() -> list[tuple[pathlib.Path, str, ast.Module]]:
    found = parsed()
    assert len(found) > 20, "the guards must see the package's modules"
    return found


def test_the_guards_see_what_they_look_for():
    """Each detector finds a planted violation (so a guard at 0 is not a guard that sees nothing)."""
    planted = ast.parse('"""doc"""\n'
                        "from pyramid.util import _hidden\n"
                        "import transaction._transaction\n"
                        "def f(request, fn):\n"
                        "    # see issue 12\n"
                        "    request.tm._txn\n"
                        "    return fn.__code__, request._private, self._own, obj.__class__\n")
    assert [name for _, name in private_imports(planted)] == ["pyramid.util._hidden",
                                                             "transaction._transaction"]
    assert [name for _, name in private_attributes(planted)] == ["request.tm._txn",
                                                                "request._private"]
    assert [line for line, _ in code_objects(planted, "")] == [7]
    assert ISSUE.search("# see issue 12") and ISSUE.search("Issue 11's block")
    assert not ISSUE.search("an issue with 2 threads") and not ISSUE.search("issuer 3")


# -- helpers --------------------------------------------------------------------------------

def code_objects(tree: ast.AST, text: str) -> list[tuple[int, str]]:
    found = [(n.lineno, "." + n.attr) for n in ast.walk(tree)
             if isinstance(n, ast.Attribute) and n.attr == "__code__"]
    found += [(n.lineno, repr(n.value)) for n in ast.walk(tree)
              if isinstance(n, ast.Constant) and n.value == "__code__"]
    return found


def _private(name: str) -> bool:
    return any(part.startswith("_") and not (part.startswith("__") and part.endswith("__"))
               for part in name.split("."))


def private_imports(tree: ast.AST) -> list[tuple[int, str]]:
    """``from pyramid.x import _y``, ``from pyramid._x import y``, ``import transaction._x``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            root = node.module.split(".")[0]
            if root in ("pyramid", "transaction"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    if _private(full):
                        found.append((node.lineno, full))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in ("pyramid", "transaction") and _private(alias.name):
                    found.append((node.lineno, alias.name))
    return found


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Call):
        return _dotted(node.func) + "()"
    return type(node).__name__


def private_attributes(tree: ast.AST) -> list[tuple[int, str]]:
    """``x._private`` where ``x`` is not ``self``, ``cls`` or ``super()`` (dunders allowed)."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not _private(node.attr):
            continue
        value = node.value
        if isinstance(value, ast.Name) and value.id in ("self", "cls"):
            continue
        if (isinstance(value, ast.Call) and isinstance(value.func, ast.Name)
                and value.func.id == "super"):
            continue
        found.append((node.lineno, _dotted(node)))
    return found


#: "issue 11", "Issue 18's", "issues 3 and 4", "issue #7"
ISSUE = re.compile(r"\bissues? #?\d+", re.IGNORECASE)


def comments_and_strings(text: str) -> list[tuple[int, str]]:
    out = []
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type in (tokenize.COMMENT, tokenize.STRING):
            for i, line in enumerate(tok.string.splitlines()):
                out.append((tok.start[0] + i, line))
    return out


# -- the guards -----------------------------------------------------------------------------

def test_no_code_objects(modules):
    found = [where(path, line, what) for path, text, tree in modules
             for line, what in code_objects(tree, text)]
    assert found == []


def test_no_private_pyramid_or_transaction_imports(modules):
    found = [where(path, line, name) for path, _, tree in modules
             for line, name in private_imports(tree)]
    assert found == []


def test_no_transaction_manager_internals(modules):
    """Neither ``transaction._transaction`` nor a manager's ``_txn``, by attribute or by name."""
    found = []
    for path, _, tree in modules:
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr in ("_txn", "_transaction")
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
                found.append(where(path, node.lineno, _dotted(node)))
            elif isinstance(node, ast.Constant) and node.value in ("_txn", "_transaction"):
                found.append(where(path, node.lineno, repr(node.value)))
    assert found == []


def test_no_fault_injection_hooks(modules):
    found = [where(path, number, line.strip()) for path, text, _ in modules
             for number, line in enumerate(text.splitlines(), 1) if "EXAMCACHE_FAULT" in line]
    assert found == []


def test_no_is_tm_active(modules):
    found = [where(path, number, line.strip()) for path, text, _ in modules
             for number, line in enumerate(text.splitlines(), 1) if "is_tm_active" in line]
    assert found == []


def test_no_private_attributes_of_other_objects(modules):
    found = [where(path, line, name) for path, _, tree in modules
             for line, name in private_attributes(tree)]
    assert found == []


def test_module_docstrings_are_at_most_40_lines(modules):
    found = []
    for path, _, tree in modules:
        doc = ast.get_docstring(tree, clean=False)
        if doc is not None and len(doc.splitlines()) > MAX_MODULE_DOCSTRING_LINES:
            found.append(where(path, 1, f"module docstring of {len(doc.splitlines())} lines"))
    assert found == []


def test_functions_are_at_most_60_lines(modules):
    found = []
    for path, _, tree in modules:
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(where(path, node.lineno, f"{node.name}() is {length} lines"))
    assert found == []


def test_no_issue_numbers_in_code(modules):
    found = [where(path, number, line.strip()[:100]) for path, text, _ in modules
             for number, line in comments_and_strings(text) if ISSUE.search(line)]
    assert found == []
