"""The WSGI fast path: early hits served before Pyramid builds a request.

The early-hit tween (:mod:`.early`) still costs the router's request setup, the
tweens above it, a WebOb response and its ``__call__``.  :func:`fast_path` wraps
the application's router (``fast_path(config.make_wsgi_app())``, or
``[filter:examcache] use = egg:pyramid_examcache#fast_path`` in a Paste
pipeline) and answers the same hits from the WSGI ``environ``, with the functions
the deriver and the tween use: the route's :class:`.eligibility.EarlyRoute`,
:func:`.views.locate`, :meth:`.policy.CachePolicy.early_peek`'s reader (``peek_local``,
or ``peek_after_barrier`` with the ``barrier`` near cache) and the stored
entity's head (:func:`.http.entity_head`).  Everything else goes to the router.

What it serves is decided once, when it wraps the router (:func:`plan`): the
early-hit table's routes whose key needs nothing but the environ (no ``cache_vary``
name that is per user or read by application code), in an application where the
early-hit tween is the outermost tween (nothing of the application's runs before
it) and nothing subscribes to ``NewRequest``.  A route with ``http_cache`` or an
application subscribing to ``NewResponse`` gets a real request
(``router.request_context``: threadlocals pushed) and the subscribers run, as on
the router's path; otherwise the hit never builds a request.  A combination where
no route can ever be served because of the application's code is a
``ConfigurationError`` naming why; where the deployment's settings prevent it
(``examcache.enabled = false``, a near cache that cannot answer without I/O, the
debug toolbar) the router is returned as it is, with one warning.  The rules and
why the answer is the same: ``docs/design/early-hits.md``.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from pyramid.events import NewResponse
from pyramid.exceptions import ConfigurationError
from pyramid.interfaces import IRoutesMapper, ITweens
from webob.request import BaseRequest

from ..trace import ENVIRON_KEY
from . import http
from .eligibility import METHODS, NOTES_KEY, TABLE_KEY, EarlyRoute, subscribed
from .vary import HEADER_NAMES
from .views import locate, serve_entity

log = logging.getLogger(__name__)

#: the dotted name of the early-hit tween (the fast path needs it outermost)
TWEEN = "pyramid_examcache.cache.early.early_hits_tween_factory"
#: a tween that may sit above the early-hit tween: the fast path then stands aside
TOOLBAR = "pyramid_debugtoolbar.toolbar_tween_factory"
#: the registry key of the fast path's plan (read by tests and the docs)
PLAN_KEY = "pyramid_examcache.fast_path"
#: at most this many requests remembered as located to a fast route's key (then forgotten
#: at once)
MATCHED_PATHS = 10_000
#: at most this many bytes of 200 replies held (each entry served: its stored bytes and its
#: body; then all forgotten at once)
REPLY_BYTES = 16 << 20
#: the environ entries a key is built from besides the path and the varied headers
#: (:func:`.views.locate`: the query part, and :func:`.variants.origin_part`)
KEY_ENVIRON = ("QUERY_STRING", "HTTP_HOST", "SERVER_NAME", "wsgi.url_scheme", "SCRIPT_NAME")


@dataclass(frozen=True, slots=True)
class FrontRoute:
    """An early route the fast path serves, and whether its hits need a real request."""

    early: EarlyRoute
    #: build a request and run ``NewResponse`` (or apply ``http_cache``)
    full: bool


@dataclass
class Plan:
    """The routes the fast path serves, and why each other early route is not (or why
    the fast path stands aside: ``disabled``)."""

    routes: dict[str, FrontRoute]
    skipped: dict[str, str]
    disabled: str | None = None
    #: ``disabled`` by the deployment's settings (a warning), not by the application's code
    by_settings: bool = False


def _environ_only(early: EarlyRoute) -> str | None:
    """Why the route's key needs more than the environ (None: it does not)."""
    varies = early.spec.varies
    if varies is None:
        return "its cache_vary names are bound at the first request (@cached)"
    for vary in varies:
        if vary.per_user:
            return f"cache_vary {vary.name!r} is per user (it needs the security policy)"
        if not vary.header:
            return f"cache_vary {vary.name!r} is read by application code"
    return None


def _tweens_above(registry) -> list[str]:
    """The tweens Pyramid runs before the early-hit tween (the order ``ptweens`` shows)."""
    tweens = registry.queryUtility(ITweens)
    order = [name for name, _ in (tweens.explicit or tweens.implicit())] if tweens else []
    return order[:order.index(TWEEN)] if TWEEN in order else ["(no early-hit tween)"]


def plan(registry) -> Plan:
    """Decide which routes the fast path serves (the configuration is committed)."""
    from . import get_policy

    policy = get_policy(registry)
    table = registry.get(TABLE_KEY)
    if not policy.settings.enabled:
        return Plan({}, {}, "examcache.enabled = false", True)
    if table is None:
        return Plan({}, {}, "examcache.early_hits = false", True)
    if table.disabled is not None:
        by_settings = registry.get(NOTES_KEY) is None  # eligibility.off_reason said no
        hint = ("" if policy.early_peek() is not None
                else " (examcache.near_cache = barrier or lease does)")
        return Plan({}, {}, table.disabled + (hint if by_settings else ""), by_settings)
    above = _tweens_above(registry)
    if above == [TOOLBAR]:
        return Plan({}, {}, "pyramid_debugtoolbar records every request (development)", True)
    if above:
        return Plan({}, {}, f"tweens run before the early-hit tween: {', '.join(above)} "
                            f"(add them under {TWEEN!r})")
    if table.new_request:
        return Plan({}, {}, "the application subscribes to NewRequest")
    new_response = subscribed(registry, NewResponse)
    routes: dict[str, FrontRoute] = {}
    skipped = dict(table.skipped)
    for name, early in table.routes.items():
        reason = _environ_only(early)
        if reason is None:
            routes[name] = FrontRoute(early, new_response or early.http_cache is not None)
        else:
            skipped[name] = reason
    if not routes:
        return Plan({}, skipped, "no route's key can be built from the WSGI environ alone")
    return Plan(routes, skipped)


class FastPath:
    """The WSGI application in front of ``router`` (see the module docstring)."""

    def __init__(self, router, table: Plan) -> None:
        from . import get_policy

        self.router = router
        registry = router.registry
        self.routes = table.routes
        self.mapper = registry.getUtility(IRoutesMapper)
        #: the environ entries a fast route's key is read from, besides PATH_INFO: the
        #: query, the origin and every header a fast route varies on (``_environ_only``)
        self.keyed = KEY_ENVIRON + tuple(sorted({
            HEADER_NAMES[vary.name] for entry in self.routes.values()
            for vary in entry.early.spec.varies or ()}))
        #: (PATH_INFO, *those entries) -> (route entry, route, matchdict, key, tags) of the
        #: requests already located to a fast route's entry (the first matching route
        #: depends on the path alone: no predicates here; the key on these values alone:
        #: :func:`.views.locate`); emptied when full or when the mapper's routes change
        self._matched: dict[tuple, tuple] = {}
        self._mapped = len(self.mapper.get_routes())
        #: cache key -> (stored entity, ETag, 200 headers, body) of the last entity served
        #: under that key (head parsed and body sliced once per stored value, not per hit)
        self._replies: dict[str, tuple] = {}
        self._reply_bytes = 0
        self._reply_lock = threading.Lock()
        self.policy = get_policy(registry)
        #: peek_local, or peek_after_barrier (the ``barrier`` near cache): plan() said one is
        self.peek = self.policy.early_peek() or self.policy.peek_local
        self.notify = registry.notify

    def __getattr__(self, name: str) -> Any:  # the router's attributes (registry, ...)
        return getattr(self.router, name)

    def __call__(self, environ: dict, start_response) -> Any:
        method = environ["REQUEST_METHOD"]
        if method in METHODS and ENVIRON_KEY not in environ:
            found = self._match(environ, method)
            if found is not None:
                served = self._serve(environ, start_response, *found)
                if served is not None:
                    return served
        return self.router(environ, start_response)

    def _match(self, environ: dict, method: str) -> tuple | None:
        """``(route entry, route, matchdict, key, tags)`` when the first route the router
        would match (the mapper's routes, in its order) is served here and the request
        has a key (:func:`.views.locate`); else None."""
        signature = (environ.get("PATH_INFO") or "/", *map(environ.get, self.keyed))
        found = self._matched.get(signature)
        if found is None or len(self.mapper.get_routes()) != self._mapped:
            found = self._locate(environ, signature)
            if found is None:
                return None
        if method not in found[0].early.methods:
            return None
        entry, route, match, key, tags = found
        return entry, route, dict(match), key, tags

    def _locate(self, environ: dict, signature: tuple) -> tuple | None:
        raw = signature[0]
        try:  # PEP 3333: PATH_INFO is latin-1 text of the raw bytes (Pyramid decodes UTF-8)
            path = raw.encode("latin-1").decode("utf-8")
        except UnicodeError:
            return None
        routes = self.mapper.get_routes()
        for route in routes:
            match = route.match(path)
            if match is not None:
                if route.predicates:  # predicates need a request: the router evaluates them
                    return None
                entry = self.routes.get(route.name)
                if entry is None:
                    return None
                try:
                    located = locate(entry.early.spec, BaseRequest(environ), dict(match))
                except Exception:  # noqa: BLE001 (an undecodable query): the deriver's business
                    return None
                if isinstance(located, str):  # a bypass: the deriver counts it
                    return None
                memo = self._matched
                if len(memo) >= MATCHED_PATHS or len(routes) != self._mapped:
                    memo.clear()  # (a flood of distinct requests costs the loop, never memory)
                    self._mapped = len(routes)
                memo[signature] = found = (entry, route, match, *located[:2])
                return found
        return None

    def _serve(self, environ, start_response, entry: FrontRoute, route, match, key, tags):
        data = self.peek(key, tags)
        if data is None:
            return None
        if entry.full:
            return self._serve_full(environ, start_response, entry, route, match, data)
        reply = self._replies.get(key)
        if reply is None or reply[0] is not data:
            reply = self._reply(key, data)
            if reply is None:
                return None
        _, etag, headers, body = reply
        stats = self.policy.stats
        if environ.get("HTTP_IF_NONE_MATCH"):
            request = BaseRequest(environ)
            if http.matches(request, etag):
                response = serve_entity(request, data, stats)  # the 304, as the deriver gives it
                if response is None:
                    return None
                stats.incr("early_hits")
                return response(environ, start_response)
        stats.incr("early_hits")
        start_response("200 OK", list(headers))
        return [] if environ["REQUEST_METHOD"] == "HEAD" else [body]

    def _reply(self, key: str, data: bytes) -> tuple | None:
        """``(data, ETag, 200 headers, body)`` of a stored entity (remembered under
        ``key``), the headers ``serve_entity``'s response gives; None if not an entity."""
        try:
            etag, headers, offset = http.entity_head(data)
        except ValueError:
            return None
        body = data[offset:]
        reply = (data, etag, (*headers, ("Content-Length", str(len(body))), ("X-Cache", "HIT")),
                 body)
        size = len(data) + len(body)
        with self._reply_lock:  # (once per stored value: the hits read the dict alone)
            replies = self._replies
            old = replies.pop(key, None)
            if old is not None:
                self._reply_bytes -= len(old[0]) + len(old[3])
            if self._reply_bytes + size > REPLY_BYTES:
                replies.clear()  # (many large entries cost a slice per hit, never memory)
                self._reply_bytes = 0
            if size <= REPLY_BYTES:
                replies[key] = reply
                self._reply_bytes += size
        return reply

    def _serve_full(self, environ, start_response, entry: FrontRoute, route, match, data):
        """A hit with a real request: ``http_cache`` applied and ``NewResponse`` run, as
        on the router's path (threadlocals pushed by the router's ``request_context``)."""
        stats = self.policy.stats
        with self.router.request_context(environ) as request:
            response = serve_entity(request, data, stats)
            if response is None:
                return None
            early = entry.early
            if early.http_cache is not None:
                seconds, options = early.http_cache
                response.cache_expires(seconds, **options)
            stats.incr("early_hits")
            attrs = request.__dict__
            attrs["matchdict"] = match
            attrs["matched_route"] = route
            request.request_iface = early.request_iface
            try:
                self.notify(NewResponse(request, response))
            except Exception:  # noqa: BLE001 what the router's execution policy does with it
                response = request.invoke_exception_view(reraise=True)
            return response(environ, start_response)


def fast_path(app, *, optional: bool = False) -> Any:
    """Wrap a committed Pyramid application (its router) in the WSGI fast path.

    Returns ``app`` itself, with one warning, where the deployment's settings keep
    the fast path from serving (``examcache.enabled = false``, early hits off, a
    backend that cannot answer without I/O, pyramid_debugtoolbar); raises
    ``ConfigurationError`` naming why where the application's code does (tweens
    above the early-hit tween, ``NewRequest`` subscribers, no route servable).
    ``optional=True`` (an app factory that always calls it): no warning for the
    settings' reasons, which are then the deployment's choice; the code's still raise."""
    registry = getattr(app, "registry", None)
    if registry is None or not callable(getattr(app, "request_context", None)):
        raise ConfigurationError(f"fast_path() wraps a Pyramid router "
                                 f"(config.make_wsgi_app()), got {app!r}")
    table = plan(registry)
    registry[PLAN_KEY] = table
    if table.disabled is not None:
        if table.by_settings:
            if not optional:
                log.warning("pyramid_examcache fast path off: %s", table.disabled)
            return app
        raise ConfigurationError(f"pyramid_examcache fast_path can serve no route: "
                                 f"{table.disabled}")
    return FastPath(app, table)


def filter_app_factory(app, global_conf: dict, **local_conf: str) -> Any:
    """Paste ``filter_app_factory`` (``use = egg:pyramid_examcache#fast_path``)."""
    if local_conf:
        raise ConfigurationError(f"the fast_path filter takes no options, got "
                                 f"{', '.join(sorted(local_conf))}")
    return fast_path(app)
