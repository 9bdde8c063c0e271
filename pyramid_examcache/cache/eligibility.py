"""Which routes the early-hit tween (:mod:`.early`) may serve: decided at configuration time.

Two steps, both from public Pyramid API; the rules and why each is needed are in
``docs/design/early-hits.md``:

* :func:`note_view`, called by the ``cache=`` view deriver (:func:`.views.cached_view`)
  for every view it derives, records what the view's own options say
  (``info.options``, ``info.predicates``): a :class:`ViewNote`, or why the view
  is not eligible;
* :func:`early_table`, called once when the tween is made (the configuration is
  committed), picks the view Pyramid calls first for each route (from the
  ``routes`` and ``views`` introspectables) and checks the route and the
  application (factories, traversal, subscribers).

:func:`off_reason` says whether the tween is installed at all (it is not when
the backend can answer neither ``peek_local`` nor ``peek_after_barrier``).  Nothing here imports
:mod:`.early`, which is imported only when the tween is installed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyramid.events import BeforeTraversal, ContextFound, NewRequest
from pyramid.interfaces import (
    IDefaultCSRFOptions,
    IDefaultPermission,
    IRootFactory,
    IRouteRequest,
    IRoutesMapper,
    ISecurityPolicy,
)
from pyramid.predicates import RequestMethodPredicate
from pyramid.security import NO_PERMISSION_REQUIRED
from pyramid.traversal import DefaultRootFactory
from zope.interface import implementedBy

#: the methods an early hit may answer
METHODS = frozenset({"GET", "HEAD"})
#: the registry key of the table the tween was made with (read by tests, the docs)
TABLE_KEY = "pyramid_examcache.early_hits"
#: the registry key of the deriver's notes (present only when the tween is installed)
NOTES_KEY = "pyramid_examcache.early_views"
#: Pyramid's view derivers that may sit above the cache deriver (see :func:`_above`)
PYRAMID_ABOVE = frozenset({"secured_view", "csrf_view", "owrapped_view", "http_cached_view",
                           "decorated_view"})
#: the name of the ``cache=`` deriver (``config.add_view_deriver(cached_view)``)
DERIVER_NAME = "cached_view"
WRAPPED = ("wraps the view above the cache (decorator=, wrapper=, debug_authorization, "
           "a permission or another add-on's view deriver)")


@dataclass(frozen=True, slots=True)
class EarlyRoute:
    """What the tween needs of one eligible route."""

    spec: Any  # a :class:`.views.CacheSpec`
    #: the request methods this route's cached view answers (a subset of GET, HEAD)
    methods: frozenset
    #: ``(seconds, options)`` of the view's ``http_cache``, applied to every early hit
    http_cache: tuple[Any, dict] | None
    #: what the router sets as ``request.request_iface`` for this route
    request_iface: Any = None


@dataclass(frozen=True, slots=True)
class ViewNote:
    """What the deriver decided for one view: eligible (``route``) or not (``reason``)."""

    seq: int  # when a view with this discriminator was first derived (Pyramid's tie order)
    route: EarlyRoute | None
    reason: str | None


@dataclass
class EarlyTable:
    """The eligible routes by name, and why each other route is not (or why the
    whole application gets no early hits: ``disabled``)."""

    routes: dict[str, EarlyRoute]
    skipped: dict[str, str]
    disabled: str | None = None
    #: does the application subscribe to NewRequest (fired on early hits then)?
    new_request: bool = False


def off_reason(settings, backend) -> str | None:
    """Why the early-hit tween is not installed (None: it is)."""
    if not settings.early_hits:
        return "examcache.early_hits = false"
    if not settings.enabled:
        return "examcache.enabled = false"
    if not (backend.answers_locally() or backend.answers_after_barrier()):
        return ("the backend never serves a hit from this process alone (read leases do: "
                "examcache.near_cache = lease, on a single Redis; so does barrier, after "
                "its barrier, on every topology; check and off read Redis)")
    return None


def _view_key(options, predicates) -> tuple:
    return (options.get("route_name"), options.get("name") or "",
            tuple(p.text() for p in predicates))


def note_view(info, spec) -> None:
    """Record what the view's options say about early hits (``spec``: its
    :class:`.views.CacheSpec`, None for a view without ``cache=``); nothing
    unless the tween is installed."""
    notes = info.registry.get(NOTES_KEY)
    if notes is None or info.exception_only:
        return
    key = _view_key(info.options, info.predicates)
    old = notes.get(key)
    seq = old.seq if old is not None else len(notes)
    if spec is None:
        notes[key] = ViewNote(seq, None, "its first view is not a cached view (cache= option)")
        return
    route = _view_route(info, spec)
    notes[key] = ViewNote(seq, *((route, None) if isinstance(route, EarlyRoute) else
                                 (None, route)))


def _view_route(info, spec) -> EarlyRoute | str:
    """The view's part of an :class:`EarlyRoute`, or why it is not eligible."""
    registry, options = info.registry, info.options
    permission = options.get("permission")
    if permission is not None and permission != NO_PERMISSION_REQUIRED:
        return "the view requires a permission"
    if permission is None and registry.queryUtility(IDefaultPermission) is not None:
        return "a default permission applies to the view"
    if spec.varies is None or any(v.per_user for v in spec.varies):
        return "cache_vary needs the identity"
    if any(not v.header for v in spec.varies):
        return "cache_vary needs application code (only request header names do not)"
    if not spec.public and registry.queryUtility(ISecurityPolicy) is not None:
        return "not cache_public=True: the deriver asks the security policy on every request"
    methods = set(METHODS)
    for predicate in info.predicates:
        if not isinstance(predicate, RequestMethodPredicate):
            return f"the view has a predicate other than request_method: {predicate.text()}"
        methods &= set(predicate.val)
    if not methods:
        return "the view answers neither GET nor HEAD"
    settings = info.settings or {}
    if (options.get("decorator") is not None or options.get("wrapper") is not None
            or settings.get("debug_authorization") or not _above(registry)):
        return WRAPPED
    if _csrf_checked(registry, options) and not methods <= _safe_methods(registry):
        return "CSRF checks would run for GET/HEAD"
    http_cache = options.get("http_cache")
    if http_cache is not None and not settings.get("prevent_http_cache"):
        http_cache = _http_cache(http_cache)
    else:
        http_cache = None
    return EarlyRoute(spec, frozenset(methods), http_cache)


def _above(registry) -> bool:
    """Are Pyramid's own derivers the only ones above the cache deriver?  (Each of
    them is a pass-through for an eligible view, given the checks of
    :func:`_view_route`.)  False when that cannot be known."""
    try:
        from pyramid.interfaces import IViewDerivers

        names = [name for name, _ in registry.getUtility(IViewDerivers).sorted()]
        return set(names[:names.index(DERIVER_NAME)]) <= PYRAMID_ABOVE
    except Exception:  # noqa: BLE001 -- unknown: no early hits for the view
        return False


def _csrf_checked(registry, options) -> bool:
    """Does Pyramid's ``csrf_view`` wrap the view (as ``csrf_view`` decides it)?"""
    explicit = options.get("require_csrf")
    defaults = registry.queryUtility(IDefaultCSRFOptions)
    return explicit is True or (explicit is not False and defaults is not None
                                and bool(defaults.require_csrf))


def _safe_methods(registry) -> frozenset:
    defaults = registry.queryUtility(IDefaultCSRFOptions)
    return METHODS if defaults is None else frozenset(defaults.safe_methods)


def _http_cache(value) -> tuple[Any, dict]:
    """``http_cache`` as ``http_cached_view`` reads it (it already validated it)."""
    if isinstance(value, (tuple, list)):
        seconds, options = value
        return seconds, dict(options)
    return value, {}


def subscribed(registry, event_class) -> bool:
    return bool(registry.adapters.subscriptions((implementedBy(event_class),), None))


def _route_entry(registry, notes, route_intr, related) -> EarlyRoute | str:
    """The route's record, or why it is not eligible."""
    name = route_intr["name"]
    if route_intr.get("static"):
        return "not a route the mapper matches"
    if route_intr.get("factory") is not None:
        return "the route has a factory (it may raise or add callbacks on every request)"
    if route_intr.get("traverse") is not None or "*traverse" in (route_intr.get("pattern") or ""):
        return "the route traverses"
    if route_intr.get("use_global_views"):
        return "the route uses global views"
    request_iface = registry.queryUtility(IRouteRequest, name=name)
    views = [intr for intr in related if intr.category_name == "views"
             and not intr.get("exception_only")]
    if any(intr.get("context") is not None for intr in views):
        return "a view of the route has a context"
    views = [intr for intr in views if not intr.get("name")]
    if request_iface is None or not views:
        return "no views"
    if len(views) > 1 and any(intr.get("accept") is not None for intr in views):
        return "a view of the route has an accept= predicate"
    found = [(intr.get("order"), notes.get(_view_key(intr, intr.get("predicates") or ())))
             for intr in views]
    if any(order is None or note is None for order, note in found):
        return "a view of the route was registered before the add-on was included"
    # Pyramid's order: fewer predicates last, then the order views were first added
    _, first = min(found, key=lambda item: (item[0], item[1].seq))
    if first.reason is not None:
        return first.reason
    route = first.route
    return EarlyRoute(route.spec, route.methods, route.http_cache, request_iface)


def early_table(registry) -> EarlyTable:
    """Decide, from the deriver's notes and the introspector, which routes are served
    early (called when the tween is made: the configuration is committed)."""
    notes = registry.get(NOTES_KEY) or {}
    if registry.queryUtility(IRoutesMapper) is None:
        return EarlyTable({}, {}, "no routes")
    root_factory = registry.queryUtility(IRootFactory)
    if root_factory is not None and root_factory is not DefaultRootFactory:
        return EarlyTable({}, {}, "the application has its own root factory")
    for event in (BeforeTraversal, ContextFound):
        if subscribed(registry, event):
            return EarlyTable({}, {}, f"the application subscribes to {event.__name__}")
    routes: dict[str, EarlyRoute] = {}
    skipped: dict[str, str] = {}
    for item in registry.introspector.get_category("routes", []):
        intr = item["introspectable"]
        entry = _route_entry(registry, notes, intr, item["related"])
        if isinstance(entry, EarlyRoute):
            routes[intr["name"]] = entry
        else:
            skipped[intr["name"]] = entry
    return EarlyTable(routes, skipped, None, subscribed(registry, NewRequest))
