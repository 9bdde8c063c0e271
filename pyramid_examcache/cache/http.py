"""A cached view as an HTTP cache: which responses are stored, which headers
are replayed, the strong ETag, ``If-None-Match`` and ``304 Not Modified``.

Stored: a ``200`` to a GET whose response sets no cookie, is not marked
``Cache-Control: private`` or ``no-store``, and whose view did not read
``request.session`` (:func:`uncacheable`).  Pyramid's ``request.session`` is a
reified property: once read, the session object sits in ``request.__dict__``;
a body rendered with a session (a CSRF token, a flash message) belongs to one
visitor and is never stored.

Replayed (:func:`stored_headers`): every header of the response except the
hop-by-hop ones (``Connection`` and the headers it names, ``Keep-Alive``,
``Proxy-*``, ``TE``, ``Trailer``, ``Transfer-Encoding``, ``Upgrade``),
``Content-Length`` (recomputed from the body) and ``X-Cache``.  A hit carries
the same header values as the miss that stored it, byte for byte.

ETag: a stored response keeps the view's own ETag if it is strong; otherwise it
gets ``"<first 128 bits of SHA-256 over the stored headers and body, base64url>"``
-- set on the miss before it is stored, so the miss and every hit carry the same
value, and a different entity always has a different ETag.  It is a content hash,
not the fill's stamp, so a refill with the same bytes (after an invalidation that
did not change this response) keeps the clients' copies valid.

``If-None-Match`` (:func:`matches`) uses the weak comparison RFC 9110 §13.1.2
prescribes for it (``W/"x"`` matches ``"x"``), a list of tags, and ``*``; a match
on a GET or HEAD answers ``304`` with no body, keeping the headers RFC 9110
§15.4.5 lists (ETag, Cache-Control, Expires, Vary, Content-Location, Date) and
Last-Modified -- on a hit and on a miss whose response has the same ETag.

What a 304 costs: on a hit the ETag is read from the entry's head (a short JSON
prefix, :mod:`.codec`) without slicing or copying the body; a head is parsed once
and remembered by its bytes (:func:`entity_head`), so hits of an entry never parse
it again.  With the Redis
backend the entry still crosses the network unless the process's near cache
(``examcache.near_cache_mb``, on by default) holds it; then the hit's round trip
carries only the fill stamp and tag versions (the near cache's own proof), so a
revalidation transfers no value bytes from Redis.  Storing the ETag in a
separate hash field would save the first transfer per process too, but needs a
second read path in every backend; the near cache already gives it for every
value a process has seen once (``python -m bench revalidate`` measures it).
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
from functools import lru_cache

from pyramid.response import Response
from webob.request import BaseRequest

from . import codec

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "proxy-connection", "te", "trailer", "trailers", "transfer-encoding",
                        "upgrade"})
NOT_STORED = HOP_BY_HOP | {"content-length", "x-cache", "set-cookie"}
#: kept on a 304 (RFC 9110 §15.4.5, plus Last-Modified and our X-Cache)
KEPT_ON_304 = frozenset({"etag", "cache-control", "expires", "vary", "content-location", "date",
                         "last-modified"})
#: ``cache_vary`` names whose value comes from request headers: the Vary they need
VARY_HEADERS = {
    "authorization": ("Authorization",),
    "authenticated_userid": ("Authorization", "Cookie"),
    "authenticated_identity": ("Authorization", "Cookie"),
    "identity": ("Authorization", "Cookie"),
    "user": ("Authorization", "Cookie"),
    "user_id": ("Authorization", "Cookie"),
    "cookies": ("Cookie",),
    "accept": ("Accept",),
    "accept_language": ("Accept-Language",),
    "accept_encoding": ("Accept-Encoding",),
    "user_agent": ("User-Agent",),
    "host": ("Host",),
}
_TAG = re.compile(r'\s*(\*|(?:W/)?"[^"]*")\s*(?:,|$)')


#: the WSGI environ key set when a request read or made a CSRF token (:func:`mark_private`)
PRIVATE = "pyramid_examcache.private"


def mark_private(request, why: str) -> None:
    """Record that ``request``'s response holds a per-visitor value (a CSRF token):
    it is never stored."""
    request.environ.setdefault(PRIVATE, why)


def vary_names(response) -> set[str]:
    """The lower-cased header names of the response's ``Vary``."""
    return {v.strip().lower() for value in response.headers.getall("Vary")
            for v in value.split(",") if v.strip()}


def uncacheable(response, request, covered: frozenset[str] | None = None,
                status: int = 200, personal: bool = False) -> str | None:
    """Why ``response`` must not be stored, or None.  ``covered``: the request
    headers (lower-case) the entry's key varies on; a ``Vary`` naming another one
    is refused (None: no ``Vary`` check but ``*``, for the final response, whose
    expected ``status`` may be a 304 the miss answered).  ``personal``: the entry's
    key is the caller's own (a per-user key of an authenticated request), which
    ``Cache-Control: private`` allows -- a private cache; ``no-store`` never."""
    if response.status_code != status:
        return "status"
    if "Set-Cookie" in response.headers:
        return "set-cookie"
    cache_control = response.headers.get("Cache-Control", "").lower()
    if "no-store" in cache_control or ("private" in cache_control and not personal):
        return "private"
    if "session" in request.__dict__:
        return "session"
    private = request.environ.get(PRIVATE)
    if private is not None:
        return private
    if "Vary" in response.headers:
        names = vary_names(response)
        if "*" in names:
            return "vary: *"
        if covered is not None and not names <= covered:
            return f"vary: {', '.join(sorted(names - covered))} (not in the key)"
    return None


def stored_headers(response) -> list[tuple[str, str]]:
    """The response's headers a hit replays (see the module docstring)."""
    named = {token.strip().lower() for value in response.headers.getall("Connection")
             for token in value.split(",")}
    skip = NOT_STORED | named
    return [(name, value) for name, value in response.headerlist if name.lower() not in skip]


def add_vary(response, names) -> None:
    """Merge ``names`` into the response's ``Vary`` (kept as the view wrote it, appended)."""
    if not names:
        return
    current = [v.strip() for header in response.headers.getall("Vary")
               for v in header.split(",") if v.strip()]
    if "*" in current:
        return
    seen = {v.lower() for v in current}
    added = []
    for name in names:
        if name.lower() not in seen:
            seen.add(name.lower())
            added.append(name)
    if added:
        if "Vary" in response.headers:
            del response.headers["Vary"]  # every Vary line; one merged line replaces them
        response.headers["Vary"] = ", ".join([*current, *added])


def is_strong(etag: str | None) -> bool:
    return etag is not None and len(etag) >= 2 and etag[0] == '"' and etag[-1] == '"' \
        and '"' not in etag[1:-1]


def entity_etag(headers: list[tuple[str, str]], body: bytes) -> str:
    h = hashlib.sha256(json.dumps(headers, separators=(",", ":")).encode())
    h.update(b"\n")
    h.update(body)
    return '"' + base64.urlsafe_b64encode(h.digest()[:16]).rstrip(b"=").decode() + '"'


def prepare(response) -> tuple[str, list[tuple[str, str]]]:
    """Give a storable response its strong ETag; return ``(etag, headers to store)``."""
    etag = response.headers.get("ETag")
    if not is_strong(etag):
        if etag is not None:
            del response.headers["ETag"]
        etag = entity_etag(stored_headers(response), response.body)
        response.headers["ETag"] = etag
    return etag, stored_headers(response)


#: entity heads (the JSON before the body) up to this size are decoded once, then remembered
HEAD_MEMO_BYTES = 4096


def _replayed(headers) -> tuple[tuple[str, str], ...]:
    # (what we store never holds these; an entry that did would not replay them)
    return tuple((n, v) for n, v in headers if n.lower() not in ("content-length", "x-cache"))


@lru_cache(maxsize=512)  # at most 512 x HEAD_MEMO_BYTES
def _memo_head(head: bytes) -> tuple[str, tuple[tuple[str, str], ...]]:
    etag, headers, _ = codec.decode_head(head)
    return etag, _replayed(headers)


def entity_head(data: bytes) -> tuple[str, tuple[tuple[str, str], ...], int]:
    """``(etag, headers, offset of the body)`` of a stored entity (ValueError if it is
    not one), as :func:`.codec.decode_head`.  Every hit of an entry has the same head,
    so its JSON is parsed once, not on every hit: the result depends on the head's
    bytes alone (the memo is keyed by them), and the headers come as a tuple nobody
    can change in place."""
    end = data.find(b"\n", 0, HEAD_MEMO_BYTES) + 1
    if end and data[:1] == codec.ENTITY:
        etag, headers = _memo_head(bytes(data[:end]))  # (bytes: a memo key must be hashable)
        return etag, headers, end
    etag, listed, offset = codec.decode_head(data)  # a long head, or not an entity
    return etag, _replayed(listed), offset


def replay(headers, body: bytes, x_cache: str) -> Response:
    """The response of a hit: the stored ``headers`` and ``body`` as they are, then
    ``Content-Length`` and ``X-Cache`` -- the header list ``Response(body=...)`` and
    ``response.headers["X-Cache"] = ...`` gave, built as one list (stored headers hold
    neither, see :data:`NOT_STORED`), without re-scanning it."""
    return Response(headerlist=[*headers, ("Content-Length", str(len(body))),
                                ("X-Cache", x_cache)], app_iter=[body])


def matches(request, etag: str) -> bool:
    """Does the request's ``If-None-Match`` match ``etag`` (weak comparison)?"""
    if isinstance(request, BaseRequest):  # its headers are a view of the WSGI environ: read it
        header = request.environ.get("HTTP_IF_NONE_MATCH")
    else:  # (e.g. pyramid.testing.DummyRequest: headers of its own)
        header = request.headers.get("If-None-Match")
    if not header:
        return False
    opaque = etag[2:] if etag.startswith("W/") else etag
    pos = 0
    while pos < len(header):
        m = _TAG.match(header, pos)
        if m is None:
            return False  # malformed: never a false 304
        tag = m.group(1)
        if tag == "*" or (tag[2:] if tag.startswith("W/") else tag) == opaque:
            return True
        pos = m.end()
    return False


def not_modified(headers) -> Response:
    """A ``304`` carrying the validator and cache headers of ``headers``."""
    response = Response(status=304, headerlist=[(n, v) for n, v in headers
                                                if n.lower() in KEPT_ON_304])
    return response
