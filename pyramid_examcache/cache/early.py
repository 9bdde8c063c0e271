"""Early hits: a tween that answers cached-view hits before pyramid_tm and the router.

Django's ``FetchFromCacheMiddleware`` is the model.  A hit of a ``cache=`` view
normally crosses the whole pipeline -- pyramid_tm, ``NewRequest``, routing, the
view lookup and the view derivers -- only for :func:`.views.serve_cached` to
replay stored bytes.  This tween serves the same hit from the top of the chain
when it safely can, and otherwise passes the request down **unchanged**::

    INGRESS -> (pyramid_debugtoolbar) -> early hits -> pyramid_tm -> excview -> router

Added (and this module imported) only when ``examcache.early_hits`` and
``examcache.enabled`` are true, and in the chain only when the backend can ever
answer early (:func:`.eligibility.off_reason`: ``peek_local`` on memory:// or a
single Redis with read leases, ``peek_after_barrier`` with the ``barrier`` near
cache).  Which routes it serves is decided at configuration time
(:mod:`.eligibility`); per request it only looks up: the route matched by
Pyramid's routes mapper (called as the router calls it), the route's
:class:`.eligibility.EarlyRoute`, the key built by :func:`.views.locate`, the
entry from :meth:`.policy.CachePolicy.early_peek`'s reader and the response from
:func:`.views.serve_entity` -- the functions the deriver uses, so the answer,
headers, ``304`` and HEAD handling and counters (plus ``early_hits``) are the
deriver's.  Anything unusual falls through to the ordinary path.

An early hit fires ``NewRequest`` (when subscribed) and sets ``matchdict``,
``matched_route`` and ``request_iface`` as the router would; response callbacks
and ``NewResponse`` run as usual.  It skips pyramid_tm, the excview tween and
every tween under this one, traversal and the view lookup.  The rules, what is
skipped and why the answer is the same: ``docs/design/early-hits.md``.
"""
from __future__ import annotations

import logging

from pyramid.events import NewRequest
from pyramid.interfaces import IRoutesMapper

from ..trace import trace_of
from .eligibility import METHODS, NOTES_KEY, TABLE_KEY, EarlyTable, early_table  # noqa: F401
from .views import locate, serve_entity

#: dotted name of the tween factory (``ptweens`` shows it)
TWEEN = "pyramid_examcache.cache.early.early_hits_tween_factory"

log = logging.getLogger(__name__)


def early_hits_tween_factory(handler, registry):
    """Serve the hits of eligible cached views (see the module docstring); pass
    everything else to ``handler`` untouched.  Where the backend cannot answer
    without I/O, or no route is eligible, ``handler`` itself is returned: no tween."""
    from . import get_policy

    if registry.get(NOTES_KEY) is None:  # (the reason is in registry[TABLE_KEY])
        return handler
    table = early_table(registry)
    registry[TABLE_KEY] = table
    if table.disabled is not None:
        # the settings asked for early hits and the application's code rules them out:
        # say so once, with the reason (the demo's ContextFound guard did this silently)
        log.warning("pyramid_examcache early hits off: %s (docs/design/early-hits.md "
                    "says what the tween needs)", table.disabled)
        return handler
    if not table.routes:
        return handler
    policy = get_policy(registry)
    routes = table.routes
    mapper = registry.getUtility(IRoutesMapper)
    notify = registry.notify if table.new_request else None
    serve = _server(policy, notify)

    def early_hits_tween(request):
        method = request.environ["REQUEST_METHOD"]
        if method not in METHODS or trace_of(request) is not None:
            return handler(request)
        try:
            info = mapper(request)
        except Exception:  # noqa: BLE001 (an undecodable path): the router raises it again
            return handler(request)
        route = info["route"]
        entry = None if route is None else routes.get(route.name)
        if entry is None or method not in entry.methods:
            return handler(request)
        response = serve(request, entry, route, info["match"])
        return handler(request) if response is None else response

    return early_hits_tween


def _server(policy, notify):
    """The function answering one request for an eligible route, or None (fall through)."""
    # peek_local, or peek_after_barrier (eligibility.off_reason installed the tween: one is)
    peek = policy.early_peek() or policy.peek_local
    stats = policy.stats

    def serve(request, entry, route, match):
        spec = entry.spec
        try:
            found = locate(spec, request, match)
        except Exception:  # noqa: BLE001 (an undecodable query): the deriver's business
            return None
        if isinstance(found, str):  # a bypass: the deriver counts it
            return None
        key, tags, _ = found
        data = peek(key, tags)
        if data is None:
            return None
        response = serve_entity(request, data, stats)
        if response is None:
            return None
        if entry.http_cache is not None:  # as http_cached_view applies it
            seconds, options = entry.http_cache
            response.cache_expires(seconds, **options)
        if notify is not None:
            try:
                notify(NewRequest(request))
            except Exception:  # noqa: BLE001 what the excview tween (below us) does with it
                # (the entry read was counted as a hit: the ordinary path would not have
                # reached the cache -- the one place the counters differ)
                return request.invoke_exception_view(reraise=True)
        stats.incr("early_hits")
        attrs = request.__dict__
        attrs["matchdict"] = match
        attrs["matched_route"] = route
        request.request_iface = entry.request_iface
        return response

    return serve
