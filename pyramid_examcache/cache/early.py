"""Early hits: a tween that answers cached-view hits before pyramid_tm and the router.

Django's ``FetchFromCacheMiddleware`` is the model.  A hit of a ``cache=`` view
normally crosses the whole pipeline -- pyramid_tm's begin/commit, ``NewRequest``,
route matching, traversal, the view lookup and the view derivers -- only for
:func:`.views.serve_cached` to replay stored bytes.  This tween serves the same
hit from the top of the chain when it safely can, and otherwise passes the
request down **unchanged**::

    INGRESS -> (pyramid_debugtoolbar) -> early hits -> pyramid_tm -> excview -> router

The response is built by :func:`.views.serve_entity`, the function the deriver
uses for its hits: the same ETag/``If-None-Match`` -> ``304``, HEAD, replayed
headers and ``X-Cache: HIT``, the same counters (``hits``, ``not_modified``) plus
``early_hits``.

When a request is served early
------------------------------
All must hold, else the request falls through:

* ``examcache.early_hits`` is true (the default) and ``examcache.enabled`` too;
* a GET or HEAD without a trace (:func:`..trace.trace_of`: the debug toolbar is
  recording this request);
* Pyramid's own routes mapper (``IRoutesMapper``, called as the router calls it)
  matches an *eligible* route (below) for that method;
* the key is the deriver's (:meth:`.views.CacheSpec.resolve_match`,
  :func:`.views.request_query`, :func:`.views.variant_key`): an undeclared query
  parameter falls through (the deriver then bypasses and counts it);
* :meth:`.policy.CachePolicy.peek_local` returns the entry: servable with no I/O
  and no waiting, and no deferred invalidation owed (memory:// always can; a
  backend without a local proof answers None -- :meth:`.Backend.peek_local`'s
  default -- and every request falls through).

The eligibility table
---------------------
Decided once, when the tween is made (``make_wsgi_app`` has committed the
configuration by then, so every view is registered and derived), from the
introspector (categories ``routes`` and ``views``, and each view's related
``permissions``) and the registered views.  A route is eligible when the view
Pyramid calls first for it is a cached view that, for GET/HEAD, would certainly
answer, and nothing it passes through on the way to the cache could change the
answer:

(a) the view registered for the route (one view, or the first of Pyramid's
    ``MultiView`` in Pyramid's own order, with no ``accept=`` views on the route,
    whose ordering depends on the request) carries the ``cache=`` option.  Other
    views on the route are allowed *after* it: a view whose only predicate is the
    request method always answers GET/HEAD, so Pyramid never reaches them (the
    demo's catch-all 405 view on every route).  The ``@cached`` decorator is left
    out: its spec is inside the view callable, under ``rendered_view`` and the
    mapper, where it cannot be found reliably;
(b) its only predicate is ``request_method`` (none at all is fine); no view of
    the route has a ``context`` (the view lookup then never depends on the
    context); the derived view's wrappers above the cache are only Pyramid's
    pass-through ones (``attr_wrapped_view``, ``predicated_view``, ``csrf_view``
    for a safe method, ``http_cached_view``) -- so no ``decorator=``,
    ``wrapper=``, ``debug_authorization``, nor any add-on's view deriver above
    ours;
(c) no permission: its own is None or ``NO_PERMISSION_REQUIRED`` and there is no
    default permission (and no ``secured_view`` in its chain: Pyramid's permission
    check always runs);
(d) no ``cache_vary`` but header names (``accept_language``, ``accept``, ...:
    read from the environ; any other value needs the identity -- the security
    policy, maybe the database, before pyramid_tm -- or application code); and
    the view is ``cache_public=True`` or the application has no security
    policy -- for any other view the deriver
    asks ``request.authenticated_userid`` on every request, which an early hit
    would skip;
(e) ``http_cache`` is applied exactly as ``http_cached_view`` applies it: the
    same ``response.cache_expires(seconds, **options)`` on every early hit and
    304 (and not at all when ``pyramid.prevent_http_cache`` removed the deriver);
(f) no route ``factory``, no ``traverse``/``*traverse``, no ``use_global_views``,
    and the application's root factory is Pyramid's default.  A factory runs on
    every ordinary hit and may raise (a 404 for an unknown id) or have effects
    (response callbacks) the tween cannot know of; needing no permission is not
    enough to skip it.  The route's own predicates are fine: the mapper evaluates
    them exactly as the router does.

And for the whole application: no ``BeforeTraversal`` or ``ContextFound``
subscriber (an early hit has no traversal to announce; such an application gets
no early hits at all).

What an early hit does and skips
--------------------------------
* ``NewRequest`` is fired -- once, and only on the early-hit path (on a
  fall-through the router fires it) -- when the application has subscribers for
  it, after the cache read and before ``request.matchdict``/``matched_route`` are
  set (as the router fires it before routing).  So subscribers that add response
  callbacks or request attributes keep working.  A subscriber that *raises* is
  handled as the excview tween would (``request.invoke_exception_view``), but
  outside pyramid_tm (its cache read still counted as a hit).  A subscriber that rewrites the request's routing
  (``PATH_INFO``) sees an already matched request: set ``examcache.early_hits =
  false`` for such an application.
* ``request.matchdict``, ``request.matched_route`` and ``request.request_iface``
  are set as the router sets them (NewResponse subscribers read
  ``matched_route``); ``root``, ``context``, ``view_name`` and the other
  traversal attributes are not.  On a fall-through nothing on the request is
  changed (the router routes again).
* Response callbacks and ``NewResponse`` run: the router runs them after the
  whole tween chain.
* Skipped: every tween below this one -- pyramid_tm (no transaction is begun or
  committed, and its ``tm.annotate_user`` no longer reads
  ``request.authenticated_userid`` for the hit: a security policy that reissues
  a cookie from ``identify`` does not do so on an early hit), the excview tween,
  and any tween an application places under this one (an implicit tween order
  places tweens that only say ``under=INGRESS`` in registration order, so check
  ``ptweens``); the router's ``BeforeTraversal``/``ContextFound``, traversal and
  the view lookup.
"""
from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any, Callable

from pyramid import viewderivers
from pyramid.config import views as config_views
from pyramid.events import BeforeTraversal, ContextFound, NewRequest
from pyramid.interfaces import (IDefaultCSRFOptions, IDefaultPermission, IMultiView,
                                IRootFactory, IRouteRequest, IRoutesMapper, ISecuredView,
                                ISecurityPolicy, IView, IViewClassifier)
from pyramid.predicates import RequestMethodPredicate
from pyramid.security import NO_PERMISSION_REQUIRED
from pyramid.traversal import DefaultRootFactory
from pyramid.tweens import _error_handler  # the excview tween's own handler
from zope.interface import Interface, implementedBy

from ..trace import trace_of
from .views import (SPEC_ATTR, CacheSpec, cached_view, request_query, request_vary,
                    serve_entity, variant_key)

#: the methods an early hit may answer
METHODS = frozenset({"GET", "HEAD"})
#: dotted name of the tween factory (``ptweens`` shows it)
TWEEN = "pyramid_examcache.cache.early.early_hits_tween_factory"
#: the registry key of the table the tween was made with (read by tests, the docs)
TABLE_KEY = "pyramid_examcache.early_hits"


def _inner_code(outer: Callable, name: str) -> types.CodeType:
    for const in outer.__code__.co_consts:
        if isinstance(const, types.CodeType) and const.co_name == name:
            return const
    raise LookupError(f"{outer.__qualname__} has no inner function {name!r}")  # a new Pyramid


#: Pyramid's wrappers that pass a GET/HEAD through unchanged (given the checks below)
_ATTR = _inner_code(config_views.attr_wrapped_view, "attr_view")
_PREDICATED = _inner_code(config_views.predicated_view, "predicate_wrapper")
_CSRF = _inner_code(viewderivers.csrf_view, "csrf_view")
_HTTP_CACHED = _inner_code(viewderivers.http_cached_view, "wrapper")
#: the ``cache=`` deriver's own wrapper (known by its code: a decorator made with
#: ``functools.wraps`` copies the wrapper's attributes, the spec among them)
_CACHED = _inner_code(cached_view, "wrapper")


@dataclass(frozen=True, slots=True)
class EarlyRoute:
    """What the tween needs of one eligible route, computed once."""

    spec: CacheSpec
    #: the request methods this route's cached view answers (a subset of GET, HEAD)
    methods: frozenset
    #: ``(seconds, options)`` of the view's ``http_cache``, applied to every early hit
    http_cache: tuple[Any, dict] | None
    #: what the router sets as ``request.request_iface`` for this route
    request_iface: Any


@dataclass
class EarlyTable:
    """The eligible routes by name, and why each other route is not (or why the
    whole application gets no early hits: ``disabled``)."""

    routes: dict[str, EarlyRoute]
    skipped: dict[str, str]
    disabled: str | None = None
    #: does the application subscribe to NewRequest (fired on early hits then)?
    new_request: bool = False


def _subscribed(registry, event_class) -> bool:
    return bool(registry.adapters.subscriptions((implementedBy(event_class),), None))


def _http_cache(value) -> tuple[Any, dict]:
    """``http_cache`` as ``http_cached_view`` reads it (it already validated it)."""
    if isinstance(value, (tuple, list)):
        seconds, options = value
        return seconds, dict(options)
    return value, {}


def _registered_view(registry, request_iface):
    registered = registry.adapters.registered
    for view_type in (IView, ISecuredView, IMultiView):
        view = registered((IViewClassifier, request_iface, Interface), view_type, "")
        if view is not None:
            return view
    return None


def _route_entry(registry, route_intr, related) -> EarlyRoute | str:
    """The route's record, or why it is not eligible."""
    route = route_intr["object"] if "object" in route_intr else None
    name = route_intr["name"]
    if route is None or route_intr.get("static"):
        return "not a route the mapper matches"
    if route_intr.get("factory") is not None or getattr(route, "factory", None) is not None:
        return "the route has a factory (it may raise or add callbacks on every request)"
    if route_intr.get("traverse") is not None or "*traverse" in (route_intr.get("pattern") or ""):
        return "the route traverses"
    if route_intr.get("use_global_views"):
        return "the route uses global views"
    request_iface = registry.queryUtility(IRouteRequest, name=name)
    if request_iface is None:
        return "no views"
    views = [intr for intr in related if intr.category_name == "views"]
    if any(intr.get("context") is not None and not intr.get("exception_only") for intr in views):
        return "a view of the route has a context"
    first = _registered_view(registry, request_iface)
    if first is None:
        return "no views"
    if IMultiView.providedBy(first):
        if first.accepts or first.media_views:
            return "a view of the route has an accept= predicate"
        if not first.views:
            return "no views"
        first = first.views[0][1]
    intr = next((i for i in views if i.get("derived_callable") is first), None)
    if intr is None:
        return "its first view is not known to the introspector"
    spec, above = None, []
    fn = first
    while fn is not None:
        if getattr(fn, "__code__", None) is _CACHED:
            spec = getattr(fn, SPEC_ATTR)
            break
        above.append(fn)
        fn = getattr(fn, "__wraps__", None)
    if not isinstance(spec, CacheSpec):
        return "its first view is not a cached view (cache= option)"
    # (c) permissions: the view's own, the default one, Pyramid's secured_view
    own = [p["value"] for p in registry.introspector.related(intr)
           if p.category_name == "permissions"]
    if any(p != NO_PERMISSION_REQUIRED for p in own):
        return "the view requires a permission"
    if not own and registry.queryUtility(IDefaultPermission) is not None:
        return "a default permission applies to the view"
    # (d) vary / who the deriver asks
    if spec.varies is None or any(v.per_user for v in spec.varies):
        return "cache_vary needs the identity"
    if any(not v.header for v in spec.varies):
        return "cache_vary needs application code (only request header names do not)"
    if not spec.public and registry.queryUtility(ISecurityPolicy) is not None:
        return "not cache_public=True: the deriver asks the security policy on every request"
    # (b) predicates and (e) http_cache: only Pyramid's pass-through wrappers above ours
    predicates = intr.get("predicates") or ()
    methods = set(METHODS)
    for predicate in predicates:
        if not isinstance(predicate, RequestMethodPredicate):
            return f"the view has a predicate other than request_method: {predicate.text()}"
        methods &= set(predicate.val)
    if not methods:
        return "the view answers neither GET nor HEAD"
    http_cache = None
    for fn in above:
        code = getattr(fn, "__code__", None)
        if code is _ATTR:
            continue
        if code is _PREDICATED:
            if list(getattr(fn, "__predicates__", ())) != list(predicates):
                return "unexpected predicates"
            continue
        if code is _CSRF:
            defaults = registry.queryUtility(IDefaultCSRFOptions)
            safe = METHODS if defaults is None else frozenset(defaults.safe_methods)
            if not methods <= safe:
                return "CSRF checks would run for GET/HEAD"
            continue
        if code is _HTTP_CACHED and intr.get("http_cache") is not None:
            http_cache = _http_cache(intr["http_cache"])
            continue
        return (f"{getattr(fn, '__qualname__', fn)!r} wraps the view above the cache "
                f"(decorator=, wrapper=, debug_authorization, a permission or another "
                f"add-on's view deriver)")
    return EarlyRoute(spec, frozenset(methods), http_cache, request_iface)


def early_table(registry) -> EarlyTable:
    """Decide, from the introspector and the registry, which routes are served early."""
    from . import get_policy

    policy = get_policy(registry)
    if not policy.settings.early_hits:
        return EarlyTable({}, {}, "examcache.early_hits = false")
    if not policy.settings.enabled:
        return EarlyTable({}, {}, "examcache.enabled = false")
    if registry.queryUtility(IRoutesMapper) is None:
        return EarlyTable({}, {}, "no routes")
    root_factory = registry.queryUtility(IRootFactory)
    if root_factory is not None and root_factory is not DefaultRootFactory:
        return EarlyTable({}, {}, "the application has its own root factory")
    for event in (BeforeTraversal, ContextFound):
        if _subscribed(registry, event):
            return EarlyTable({}, {}, f"the application subscribes to {event.__name__}")
    routes: dict[str, EarlyRoute] = {}
    skipped: dict[str, str] = {}
    for item in registry.introspector.get_category("routes", []):
        intr = item["introspectable"]
        entry = _route_entry(registry, intr, item["related"])
        if isinstance(entry, EarlyRoute):
            routes[intr["name"]] = entry
        else:
            skipped[intr["name"]] = entry
    return EarlyTable(routes, skipped, None, _subscribed(registry, NewRequest))


def early_hits_tween_factory(handler, registry):
    """Serve the hits of eligible cached views (see the module docstring); pass
    everything else to ``handler`` untouched.  With ``examcache.early_hits =
    false`` (or no eligible route) ``handler`` itself is returned: no tween."""
    from . import get_policy

    table = early_table(registry)
    registry[TABLE_KEY] = table
    if table.disabled is not None or not table.routes:
        return handler
    policy = get_policy(registry)
    peek_local = policy.peek_local
    incr = policy.stats.incr
    stats = policy.stats
    routes = table.routes
    mapper = registry.getUtility(IRoutesMapper)
    notify = registry.notify if table.new_request else None

    def early_hits_tween(request):
        environ = request.environ
        method = environ["REQUEST_METHOD"]
        if method not in METHODS or trace_of(request) is not None:
            return handler(request)
        try:
            info = mapper(request)
        except Exception:  # (an undecodable path): the router raises it again, under excview
            return handler(request)
        route = info["route"]
        if route is None:
            return handler(request)
        entry = routes.get(route.name)
        if entry is None or method not in entry.methods:
            return handler(request)
        match = info["match"]
        spec = entry.spec
        try:
            base, tags, key = spec.resolve_match(match)
            query = request_query(spec, request)
        except Exception:  # (a missing value, an undecodable query): the deriver's business
            return handler(request)
        if query is None:  # undeclared: the deriver bypasses (and counts it)
            return handler(request)
        vary = request_vary(spec, request) if spec.vary else ""  # (header names only)
        key = variant_key(spec, request, base, key, query, vary)
        if key is None:
            return handler(request)
        data = peek_local(key, tags)
        if data is None:
            return handler(request)
        response = serve_entity(request, data, stats)
        if response is None:
            return handler(request)
        if entry.http_cache is not None:
            seconds, options = entry.http_cache
            response.cache_expires(seconds, **options)
        if notify is not None:
            try:
                notify(NewRequest(request))
            except Exception as exc:  # what the excview tween (below us) does with it
                # (the entry read was counted as a hit: the ordinary path would not have
                # reached the cache -- the one place the counters differ)
                return _error_handler(request, exc)
        incr("early_hits")
        attrs = request.__dict__
        attrs["matchdict"] = match
        attrs["matched_route"] = route
        request.request_iface = entry.request_iface
        return response

    return early_hits_tween

