"""``Cache-Control: private`` and ``Vary: Authorization`` on per-user responses;
``X-Frame-Options: DENY`` and ``Content-Security-Policy: frame-ancestors 'none'`` on
every HTML page (the demo's, the add-on's admin page, the docs): none may be framed
(clickjacking).

Set by a :class:`pyramid.events.NewResponse` subscriber, i.e. after the view
and pyramid_examcache's view deriver have returned: the per-user copy of the
exam view is still stored in the cache (the add-on refuses to store responses
marked ``private``), and hits get the headers as well as misses.
"""
from __future__ import annotations

from pyramid.events import NewResponse

#: routes whose every response concerns the caller (credentials, tokens, own account)
PRIVATE_ROUTES = frozenset({"login", "register", "verify", "job"})
#: routes whose response depends on the caller's token (``viewer`` of the exam)
PER_USER_ROUTES = frozenset({"exam"})


def add_vary(response, name: str) -> None:
    vary = [v.strip() for v in (response.headers.get("Vary") or "").split(",") if v.strip()]
    if name.lower() not in {v.lower() for v in vary}:
        response.headers["Vary"] = ", ".join([*vary, name])


def frame_headers(response) -> None:
    """No framing of an HTML page: ``X-Frame-Options`` for old browsers, CSP
    ``frame-ancestors`` for the others (added to a policy the page already has)."""
    if response.content_type not in ("text/html", "application/xhtml+xml"):
        return
    response.headers["X-Frame-Options"] = "DENY"
    policy = (response.headers.get("Content-Security-Policy") or "").strip().rstrip(";")
    if "frame-ancestors" not in policy.lower():
        policy = f"{policy}; frame-ancestors 'none'" if policy else "frame-ancestors 'none'"
        response.headers["Content-Security-Policy"] = policy


def private_headers(event: NewResponse) -> None:
    request, response = event.request, event.response
    route = getattr(request, "matched_route", None)
    name = route.name if route is not None else None
    frame_headers(response)
    if name in PRIVATE_ROUTES:
        response.headers["Cache-Control"] = "private, no-store"
        add_vary(response, "Authorization")
    elif name in PER_USER_ROUTES:
        add_vary(response, "Authorization")  # an anonymous copy is shared, keyed on the header
        if request.headers.get("Authorization"):
            response.headers["Cache-Control"] = "private"


def includeme(config) -> None:
    config.add_subscriber(private_headers, NewResponse)
