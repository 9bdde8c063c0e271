"""The configuration reference, generated at build time from the tables the settings parser
reads (``pyramid_examcache.settings.CACHE_TABLE``, ``MAIL_TABLE``, ``DEPRECATED_TABLE``), so
the page cannot drift from the code.

In a MyST page::

    ```{examcache-settings} cache
    ```

renders one table row per setting: name, default, what is allowed, meaning. The argument is
``cache``, ``mail``, ``deprecated`` or ``pyramid_mailer`` (the ``mail.*`` names only
pyramid_mailer reads, accepted silently). "Allowed" is read from the row (range, choices,
integer) and from its converter; a converter this extension does not know fails the build,
so a new kind of setting cannot appear without being described.
"""
from __future__ import annotations

from typing import Any

from docutils import nodes
from docutils.parsers.rst import Directive
from sphinx.errors import ExtensionError

from pyramid_examcache import settings as source

#: what each converter of the settings table accepts (numbers are described from the row)
KINDS = {
    "_boolean": "boolean (true/false)",
    "_text": "text",
    "_raw_text": "text",
    "_optional": "text (optional)",
    "_key_prefix": "text without whitespace",
    "_session_attr": "a request attribute name",
    "_request_attr": "a request attribute name",
    "_sender": "a mail address or Name <address>",
    "_database": "an SQLAlchemy URL",
    "_admin_path": "an absolute URL path",
    "_permission": "a permission name",
    "_login_url": "a path on this site or an http(s) URL",
    "_metrics_path": "a URL path",
    "_rate_limit": "a rate: N/s, N/m, N/h or N/d",
    "_domain_rate_limits": "domain=rate, ... (commas or new lines)",
}
TABLES = {"cache": "CACHE_TABLE", "mail": "MAIL_TABLE", "deprecated": "DEPRECATED_TABLE"}


def _number(spec: Any) -> str:
    kind = "integer" if spec.integer else "number"
    low = f"{spec.minimum:g}"
    if spec.maximum is not None:
        return f"{kind}, {low} to {spec.maximum:g}"
    return f"{kind} > {low}" if not spec.allow_zero and spec.minimum == 0 else f"{kind} ≥ {low}"


def allowed(spec: Any) -> list[nodes.Node]:
    """What a value of ``spec`` may be, as inline nodes."""
    converter = spec.convert.__name__
    if converter == "_number":
        return [nodes.Text(_number(spec))]
    if converter == "_lease_ms":
        low = "0 (off) or " if spec.allow_zero else ""
        return [nodes.Text(f"{low}200 to 60000 (milliseconds)")]
    if converter in ("_choice", "_url"):
        parts: list[nodes.Node] = [nodes.Text("one of " if converter == "_choice"
                                              else "a URL: ")]
        for i, choice in enumerate(spec.choices):
            parts += [nodes.Text(", ")] if i else []
            parts.append(nodes.literal(text=choice + ("://" if converter == "_url" else "")))
        return parts
    if converter not in KINDS:
        raise ExtensionError(f"docs/_ext/examcache_settings.py: {spec.name} uses the converter "
                             f"{converter}, which the configuration reference does not "
                             "describe; add it to KINDS")
    return [nodes.Text(KINDS[converter])]


def default(spec: Any) -> list[nodes.Node]:
    value = spec.default
    if value is None or value == ():
        return [nodes.emphasis(text="unset")]
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = f"{value:g}"
    else:
        text = str(value)
    return [nodes.literal(text=text)]


def _entry(children: list[nodes.Node]) -> nodes.entry:
    entry = nodes.entry()
    entry += nodes.paragraph("", "", *children)
    return entry


def table(rows: list[list[list[nodes.Node]]], header: list[str], widths: list[int]) -> nodes.table:
    node = nodes.table(classes=["examcache-settings"])
    group = nodes.tgroup(cols=len(header))
    node += group
    group.extend(nodes.colspec(colwidth=w) for w in widths)
    head = nodes.thead()
    head += nodes.row("", *(_entry([nodes.Text(h)]) for h in header))
    group += head
    body = nodes.tbody()
    body.extend(nodes.row("", *(_entry(cell) for cell in row)) for row in rows)
    group += body
    return node


class SettingsDirective(Directive):
    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        which = self.arguments[0]
        if which == "pyramid_mailer":
            names = sorted(source.PYRAMID_MAILER_SETTINGS - source.MAIL_SETTINGS)
            parts: list[nodes.Node] = []
            for i, name in enumerate(names):
                parts += [nodes.Text(", ")] if i else []
                parts.append(nodes.literal(text=name))
            return [nodes.paragraph("", "", *parts)]
        if which not in TABLES:
            raise self.error(f"examcache-settings: unknown table {which!r}; one of "
                             f"{', '.join([*TABLES, 'pyramid_mailer'])}")
        specs = getattr(source, TABLES[which])
        if which == "deprecated":
            rows = [[[nodes.literal(text=s.name)], [nodes.literal(
                text=source.DEPRECATED_SETTINGS[s.name])], default(s), allowed(s)]
                for s in specs]
            return [table(rows, ["setting", "replaced by", "default", "allowed"],
                          [30, 30, 10, 30])]
        rows = [[[nodes.literal(text=s.name)], default(s), allowed(s), [nodes.Text(s.help)]]
                for s in specs]
        return [table(rows, ["setting", "default", "allowed", "meaning"], [30, 15, 25, 30])]


def setup(app: Any) -> dict[str, Any]:
    app.add_directive("examcache-settings", SettingsDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1"}
