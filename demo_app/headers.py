"""``Cache-Control: private`` and ``Vary: Authorization`` on per-user responses;
``X-Frame-Options: DENY`` and ``Content-Security-Policy: frame-ancestors 'none'`` on
every HTML page (the demo's, the add-on's admin page, the docs): none may be framed
(clickjacking).

Set by a tween placed right under pyramid_examcache's early-hit tween (over
pyramid_tm and the exception views), i.e. after the view and the add-on's view
deriver have returned: the per-user copy of the exam view is still stored in the
cache (the add-on refuses to store responses marked ``private``), and the deriver's
hits get the headers as well as misses.  The early hits the tween above it (or the
WSGI fast path) serves are the questions route's: public JSON, which these rules
leave as stored (``tests/demo/test_early_hits.py`` checks they are byte for byte
the router's).  It is not a ``NewResponse`` subscriber: with one, each fast-path hit
would build a request to notify it (four times the cost, ``docs/design/early-hits.md``).
"""
from __future__ import annotations

from pyramid.tweens import EXCVIEW, INGRESS

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


def private_headers(request, response) -> None:
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


def headers_tween_factory(handler, registry):
    def headers_tween(request):
        response = handler(request)
        private_headers(request, response)
        return response

    return headers_tween


#: pyramid_examcache's early-hit tween (``ptweens`` shows it)
EARLY_HITS_TWEEN = "pyramid_examcache.cache.early.early_hits_tween_factory"


def includeme(config) -> None:
    config.add_tween("demo_app.headers.headers_tween_factory",
                     under=(EARLY_HITS_TWEEN, INGRESS),
                     over=("pyramid_tm.tm_tween_factory", EXCVIEW))
