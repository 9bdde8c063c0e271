"""Key templates such as ``exam:{examId}:questions``.

Values put into a template are escaped (percent-encoding of everything but
letters, digits and ``-_.~``) so that a value from a URL can never forge
another key, and the ORM and the views build the same key from the same id.
"""
from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from string import Formatter
from typing import Any
from urllib.parse import quote


@lru_cache(maxsize=4096)
def fields(template: str) -> tuple[str, ...]:
    """The field names of ``template``; raises ValueError for anything but
    plain ``{name}`` fields.  (Parsed once per template: it runs on every cached
    request.)"""
    names = []
    for _, name, spec, conv in Formatter().parse(template):
        if name is None:
            continue
        if not name.isidentifier() or spec or conv:
            raise ValueError(f"key template {template!r}: only plain {{name}} fields are allowed")
        names.append(name)
    return tuple(names)


def escape(value: Any) -> str:
    text = str(value)
    if text.isascii() and text.isalnum():  # what quote() leaves unchanged anyway (ids)
        return text
    return quote(text, safe="")


def fill(template: str, values: Mapping[str, Any]) -> str:
    """``template`` with each field replaced by its escaped value (KeyError if missing)."""
    return template.format_map({name: escape(values[name]) for name in fields(template)})
