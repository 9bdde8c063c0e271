"""SQL on the outbox table for the admin page: list (filter, search, page), counts, one job.

Everything here reads :data:`~pyramid_examcache.mail.outbox.outbox_table` through the
request's session; nothing is written (retry and cancel go through ``request.mailer``).
The search is portable (PostgreSQL, SQLite): ``ILIKE`` (``lower() LIKE lower()`` on SQLite)
on the subject and on the recipients' JSON cast to text, with ``%``, ``_`` and ``\\``
escaped so they match themselves.
"""
from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, Text, cast, func, or_, select
from sqlalchemy.engine import Row

from ..mail.outbox import STATES, as_utc, outbox_table
from ..mail.priority import priority_name
from ..mail.status import is_job_id

DEFAULT_SIZE = 25
MAX_SIZE = 200
MAX_PAGE = 100_000
MAX_QUERY = 200
#: characters of ``failed_reason`` shown in the list (the detail page shows it all)
REASON_PREVIEW = 160


class BadParameter(ValueError):
    """A query parameter the page cannot use: answered ``400`` naming ``field``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class JobQuery:
    state: str | None = None
    q: str = ""
    page: int = 1
    size: int = DEFAULT_SIZE

    def params(self, **changes: Any) -> dict[str, str]:
        """The query string of this query with ``changes`` (defaults left out)."""
        values = {"state": self.state or "", "q": self.q, "page": self.page, "size": self.size,
                  **changes}
        out = {}
        if values["state"]:
            out["state"] = values["state"]
        if values["q"]:
            out["q"] = values["q"]
        if values["page"] != 1:
            out["page"] = str(values["page"])
        if values["size"] != DEFAULT_SIZE:
            out["size"] = str(values["size"])
        return out


def _one(params: Mapping[str, Any], name: str) -> str | None:
    values = params.getall(name) if hasattr(params, "getall") else (
        [params[name]] if name in params else [])
    if len(values) > 1:
        raise BadParameter(name, "given more than once")
    return values[0] if values else None


def _int(params: Mapping[str, Any], name: str, default: int, maximum: int) -> int:
    raw = _one(params, name)
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 9 or int(raw) < 1:
        raise BadParameter(name, "must be a positive integer")
    value = int(raw)
    if value > maximum:
        raise BadParameter(name, f"must be at most {maximum}")
    return value


def parse_job_query(params: Mapping[str, Any]) -> JobQuery:
    """The list's ``state``, ``q``, ``page``, ``size`` from a query string (a MultiDict);
    :class:`BadParameter` for anything else than what the page offers."""
    state = _one(params, "state") or None
    if state is not None and state not in STATES:
        raise BadParameter("state", f"must be one of {', '.join(STATES)} (or empty for all)")
    q = (_one(params, "q") or "").strip()
    if len(q) > MAX_QUERY:
        raise BadParameter("q", f"at most {MAX_QUERY} characters")
    if any(ord(c) < 32 or ord(c) == 127 or 0xD800 <= ord(c) <= 0xDFFF for c in q):
        raise BadParameter("q", "contains control characters")
    page = _int(params, "page", 1, MAX_PAGE)
    size = _int(params, "size", DEFAULT_SIZE, MAX_SIZE)
    return JobQuery(state, q, page, size)


def like_pattern(text: str) -> str:
    """``%text%`` for ``LIKE ... ESCAPE '\\'``: ``\\``, ``%`` and ``_`` match themselves."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _addresses_text() -> Any:
    """The recipients' JSON as text without its keys: ``{"to": [...], "cc": ...}`` -> ``{:
    [...], : ...}`` (a search for "to" or "cc" must not match every row). An address is never
    exactly ``to``, ``cc`` or ``bcc`` (it has an ``@``), so only the keys are removed."""
    text: ColumnElement[str] = cast(outbox_table.c.recipients, Text)
    for key in ("to", "cc", "bcc"):
        text = func.replace(text, f'"{key}"', "")
    return text


def _filters(query: JobQuery) -> list[Any]:
    t = outbox_table
    where: list[Any] = []
    if query.state:
        where.append(t.c.state == query.state)
    if query.q:
        # the recipients are stored as JSON text, where "josé" is "jos\\u00e9" and a quote
        # is \\": search for the JSON spelling of the query
        json_text = json.dumps(query.q)[1:-1]
        where.append(or_(t.c.subject.ilike(like_pattern(query.q), escape="\\"),
                         _addresses_text().ilike(like_pattern(json_text), escape="\\")))
    return where


@dataclass
class JobPage:
    query: JobQuery
    rows: list[dict[str, Any]]
    total: int
    pages: int = field(init=False)

    def __post_init__(self) -> None:
        self.pages = max(1, math.ceil(self.total / self.query.size))


def recipients_of(value: Any) -> dict[str, list[str]]:
    """``{"to": [...], "cc": [...], "bcc": [...]}`` of a stored ``recipients`` value."""
    if isinstance(value, list):
        return {"to": [str(v) for v in value], "cc": [], "bcc": []}
    if isinstance(value, dict):
        return {k: [str(v) for v in value.get(k) or ()] for k in ("to", "cc", "bcc")}
    return {"to": [], "cc": [], "bcc": []}


def _list_row(row: Row) -> dict[str, Any]:
    recipients = recipients_of(row.recipients)
    everyone = recipients["to"] + recipients["cc"] + recipients["bcc"]
    reason = row.failed_reason or ""
    return {"id": row.id, "state": row.state, "subject": row.subject,
            "recipients": everyone, "attempts": row.attempts,
            "created_at": as_utc(row.created_at), "updated_at": as_utc(row.updated_at),
            "next_attempt_at": as_utc(row.next_attempt_at),
            "priority": priority_name(row.priority),
            "failed_reason": reason[:REASON_PREVIEW] + ("…" if len(reason) > REASON_PREVIEW
                                                        else "")}


def list_jobs(session: Any, query: JobQuery) -> JobPage:
    """One page of jobs, newest first, and how many match in all."""
    t = outbox_table
    where = _filters(query)
    total = session.execute(select(func.count()).select_from(t).where(*where)).scalar_one()
    columns = (t.c.id, t.c.state, t.c.subject, t.c.recipients, t.c.attempts, t.c.created_at,
               t.c.updated_at, t.c.next_attempt_at, t.c.failed_reason, t.c.priority)
    rows = session.execute(
        select(*columns).where(*where).order_by(t.c.created_at.desc(), t.c.id.desc())
        .limit(query.size).offset((query.page - 1) * query.size)).all()
    return JobPage(query, [_list_row(r) for r in rows], total)


def count_by_state(session: Any) -> dict[str, int]:
    """``{state: jobs}`` for every state (0 where none)."""
    t = outbox_table
    counts = dict.fromkeys(STATES, 0)
    for state, n in session.execute(select(t.c.state, func.count()).group_by(t.c.state)):
        counts[state] = n
    return counts


def get_job(session: Any, job_id: str) -> dict[str, Any] | None:
    """Everything the detail page shows of one job (never the bodies nor the attachments'
    data), or ``None``: unknown, purged, or not an id the mailer issues."""
    if not is_job_id(job_id):
        return None
    t = outbox_table
    columns = [c for c in t.c if c.name not in ("html", "text", "attachments")]
    row = session.execute(select(*columns, t.c.attachments).where(t.c.id == job_id)).first()
    if row is None:
        return None
    job = {c.name: getattr(row, c.name) for c in columns}
    for name, value in job.items():
        if isinstance(value, dt.datetime):
            job[name] = as_utc(value)
    job["recipients"] = recipients_of(row.recipients)
    job["failed_recipients"] = dict(row.failed_recipients or {})
    job["headers"] = dict(row.headers or {})
    job["priority"] = priority_name(row.priority)
    job["attachments"] = [{"filename": a.get("filename") or "", "content_type":
                           a.get("content_type") or "", "size": len(a.get("data") or "") * 3 // 4}
                          for a in (row.attachments or ()) if isinstance(a, dict)]
    return job
