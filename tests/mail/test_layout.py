"""The mail package's imports run one way (issue 9, item 6): a module imports only modules
below it in LAYERS, the mailer never imports the cache package, and no production module
knows about the test mode."""
from __future__ import annotations

import ast
import pathlib

import pyramid_examcache.mail as mail_package

#: lowest first; a module may import only modules of lower layers
LAYERS = [
    {"attachments", "outbox", "priority", "ratewindow"},
    {"message", "compose", "status", "ratelimit"},
    {"transports", "events", "throttle"},
    {"relay"},
    {"tasks"},
    {"queue"},
    {"mailer"},
    {"__init__"},
]
MAIL_DIR = pathlib.Path(mail_package.__file__).parent


def mail_imports(path: pathlib.Path) -> set[str]:
    """Names of the sibling modules (and outside packages) ``path`` imports, at any depth."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:  # from .x import y / from . import x
                found.update([node.module.split(".")[0]] if node.module
                             else [a.name for a in node.names])
            elif node.level == 2 and node.module:  # from ..cache import ...
                found.add(".." + node.module.split(".")[0])
            elif node.module and node.module.startswith("pyramid_examcache"):
                found.add(".." + node.module.split(".")[1])
    return found


def test_every_module_has_a_layer():
    modules = {p.stem for p in MAIL_DIR.glob("*.py")}
    assert modules == set().union(*LAYERS)


def test_imports_run_one_way():
    rank = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    wrong = []
    for path in MAIL_DIR.glob("*.py"):
        for name in mail_imports(path):
            if name.startswith(".."):
                if name in ("..cache", "..testing", "..scripts"):
                    wrong.append(f"{path.stem} imports {name[2:]}")
            elif rank[name] >= rank[path.stem]:
                wrong.append(f"{path.stem} imports {name}")
    assert wrong == []
