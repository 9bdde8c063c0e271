"""Cached views: the ``cache=`` view option (a view deriver) and ``@cached``.

::

    @view_config(route_name="exam_questions", renderer="json",
                 cache="exam:{examId}:questions", cache_ttl=7200,
                 cache_tags=("exam:{examId}",), cache_public=True, cache_params=("page",))

The key and tag templates are filled from ``request.matchdict``; the declared
query parameters (``cache_params``) and the hashed ``cache_vary`` values make
the variant's key (:mod:`.variants`).  Only ``GET`` and ``HEAD`` are cached.  A
hit serves the stored body bytes with the stored headers (no decoding, no
rendering) and ``X-Cache: HIT``; a miss renders once (the lease of
:mod:`.policy`), stores it if it may and answers ``X-Cache: MISS``.  A request
with a query parameter the view did not declare runs the view without the cache
(``param_bypasses``).  HEAD shares the GET entry; a HEAD miss with an empty body
stores nothing.  What is stored, replayed and answered ``304`` is :mod:`.http`'s
business.

Who may fill a shared key (G5, H1): **a view declared ``cache_public=True``
promises that its response is the same whoever asks; without it, a response to
an authenticated request (an ``Authorization`` header or an
``authenticated_userid``) is stored only under a key that varies by user
(``cache_vary``), though such a request may still be served what anonymous
requests stored.**  ``cache_public`` with a per-user ``cache_vary`` is a
configuration error (``docs/design/per-user.md``).

Deriver order: ``cached_view`` sits under ``decorated_view`` and over
``rendered_view``: inside ``secured_view`` (permission checks run before any
hit) and inside ``http_cached_view``, whose ``Cache-Control``/``Expires`` are
computed afresh on every response (an ``http_cache`` declaring ``private`` or
``no_store`` on a cached view is refused at configuration time).

Early hits: the deriver also records, from the view's own options, whether the
early-hit tween (:mod:`.early`, rules in :mod:`.eligibility` and
``docs/design/early-hits.md``) may serve its hits; both build the key with
:func:`locate` and the response with :func:`serve_entity`.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from pyramid.exceptions import ConfigurationError
from pyramid.request import Request
from pyramid.response import Response
from pyramid.util import takes_one_arg

from . import codec, http
from . import vary as vary_rules
from .eligibility import note_view
from .policy import MAX_KEY_LENGTH, check_key
from .templates import fields, fill
from .variants import DELIMITERS, RESERVED, entity_key, key_tag, origin_part, query_part, vary_part
from .vary import UnkeyableVary

log = logging.getLogger(__name__)

#: request attributes whose use in ``cache_vary`` makes a key per user
USER_VARY = vary_rules.PER_USER
_CACHEABLE_METHODS = frozenset({"GET", "HEAD"})
#: resolved keys remembered per cached view, and the longest matchdict values remembered
RESOLVED_MAX = 256
RESOLVED_CHARS = 128


def _names(value: Any, option: str) -> tuple[str, ...]:
    names = (value,) if isinstance(value, str) else tuple(value or ())
    for name in names:
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"{option} entries must be non-empty strings, got {name!r}")
    return names


class CacheSpec:
    """A validated cache option: templates, ttl, tags, vary, public, params."""

    __slots__ = ("key", "ttl", "tags", "vary", "per_user", "public", "params", "vary_headers",
                 "covered", "varies", "fixed", "warned", "_names", "_resolved")

    def __init__(self, key: str, ttl: Any = None, tags: Any = (), vary: Any = (),
                 public: Any = False, params: Any = (), accept: Any = None) -> None:
        if not isinstance(key, str) or not key:
            raise ConfigurationError(f"cache= must be a key template string, got {key!r}")
        try:
            fields(key)
        except ValueError as exc:
            raise ConfigurationError(f"cache={key!r}: {exc}") from None
        if key.startswith(RESERVED) or any(c in key for c in DELIMITERS):
            raise ConfigurationError(f"cache={key!r}: a view's key template may not start with "
                                     f"{RESERVED!r} nor contain {DELIMITERS!r}")
        if ttl is not None and (not isinstance(ttl, int) or isinstance(ttl, bool) or ttl <= 0):
            raise ConfigurationError(f"cache_ttl must be a positive int (seconds), got {ttl!r}")
        tags = _names(tags, "cache_tags")
        for tag in tags:
            try:
                fields(tag)
            except ValueError as exc:
                raise ConfigurationError(f"cache_tags={tags!r}: {exc}") from None
            if tag.startswith(RESERVED):
                raise ConfigurationError(f"cache_tags={tags!r}: {RESERVED!r} is reserved")
        vary = _names(vary, "cache_vary")
        for name in vary:
            if not name.isidentifier():
                raise ConfigurationError(f"cache_vary entries must be request attribute names, "
                                         f"got {name!r}")
        if not isinstance(public, bool):
            raise ConfigurationError(f"cache_public must be True or False, got {public!r}")
        self.per_user = bool(USER_VARY.intersection(vary))
        if public and self.per_user:
            raise ConfigurationError(
                f"cache={key!r}: cache_public=True says the response is the same for every "
                f"caller, but cache_vary={vary!r} keys it per user; choose one")
        for name in vary:
            if name in vary_rules.NOT_IDENTIFIERS:
                vary_rules.resolve((name,), None)  # raises the ConfigurationError
        params = _names(params, "cache_params")
        self.key, self.ttl, self.tags, self.vary = key, ttl, tags, vary
        self.public, self.params = public, frozenset(params)
        #: how each vary name is read (:mod:`.vary`), set by :meth:`bind`
        self.varies: tuple[vary_rules.VaryName, ...] | None = None
        self.vary_headers: tuple[str, ...] = ()
        self.covered: frozenset[str] = frozenset({"host"})
        #: a part every key of this view carries (its ``accept=`` predicate)
        self.fixed = "" if not accept else "|@accept=" + fill("{a}", {"a": str(accept)})
        self.warned: set[str] = set()
        if not vary:
            self.bind(None)
        #: the matchdict names the templates use, in order
        self._names = tuple(dict.fromkeys(n for t in (key, *tags) for n in fields(t)))
        # Filling, escaping and checking the templates gives the same answer for the
        # same values: done once per distinct set of short values, not per request
        # (bounded: at most RESOLVED_MAX entries of at most RESOLVED_CHARS characters).
        self._resolved = lru_cache(maxsize=RESOLVED_MAX)(self._resolve)

    @property
    def names(self) -> tuple[str, ...]:
        """The matchdict names the key and tag templates use."""
        return self._names

    def bind(self, registry) -> CacheSpec:
        """Resolve the vary names against ``registry``'s ``config.add_cache_vary``
        names (once: the deriver at configuration time, ``@cached`` at its first
        request).  ConfigurationError for a name that is never an identifier, or a
        per-user name on a ``cache_public=True`` view."""
        registered = None if registry is None else registry.get(vary_rules.REGISTRY_KEY)
        varies = vary_rules.resolve(self.vary, registered)
        per_user = any(v.per_user for v in varies)
        if self.public and per_user:
            raise ConfigurationError(
                f"cache={self.key!r}: cache_public=True says the response is the same for "
                f"every caller, but cache_vary={self.vary!r} keys it per user; choose one")
        headers = []
        for name in self.vary:
            if registered and name in registered:
                headers.extend(registered[name][2])
            else:
                headers.extend(http.VARY_HEADERS.get(name, ()))
        self.vary_headers = tuple(dict.fromkeys(headers))
        self.covered = frozenset({"host", *(h.lower() for h in self.vary_headers)})
        self.per_user = per_user
        self.varies = varies
        return self

    def warn_once(self, reason: str, level: int = logging.WARNING) -> None:
        """Log once per view and reason why its responses are not stored."""
        if reason not in self.warned and len(self.warned) < 32:
            self.warned.add(reason)
            log.log(level, "cached view %r: %s", self.key, reason)

    def _resolve(self, values: tuple[str, ...]) -> tuple[str, tuple[str, ...], str | None]:
        matchdict = dict(zip(self._names, values, strict=True))
        base = fill(self.key, matchdict)
        tags = (*(fill(t, matchdict) for t in self.tags), key_tag(base))
        try:
            for tag in tags:
                check_key(tag, "tag", internal=True)
            key = check_key(entity_key(base, "", ""), internal=True)
        except ValueError:
            key = None
        return base, tags, key

    def resolve(self, request) -> tuple[str, tuple[str, ...], str | None]:
        """``(base key, tags, key)`` for ``request``: the tags include the implicit
        key tag; ``key`` is the entry's key without query or vary parts, None when
        a key or tag would be too long (KeyError: missing matchdict value)."""
        return self.resolve_match(request.matchdict or {})

    def resolve_match(self, matchdict) -> tuple[str, tuple[str, ...], str | None]:
        """:meth:`resolve` for a route's ``matchdict``."""
        # str(): the values are keyed by their text (1 and True are equal, not the same text)
        values = tuple([str(matchdict[name]) for name in self._names])
        if sum(map(len, values)) > RESOLVED_CHARS:  # long values are not remembered
            return self._resolve(values)
        return self._resolved(values)


def _authenticated(request) -> bool:
    if request.headers.get("Authorization"):
        return True
    try:
        return request.authenticated_userid is not None
    except Exception:  # noqa: BLE001 a security policy that cannot answer: authenticated
        return True


def request_query(spec: CacheSpec, request) -> str | None:
    """The key's query part for ``request`` (:func:`.variants.query_part`): ``""``
    without a query string (no ``request.GET`` built), None when the request
    carries a parameter ``spec`` does not declare (it must bypass the cache)."""
    if request.environ.get("QUERY_STRING") == "":  # the common case: no request.GET to build
        return ""
    return query_part(spec.params, request.GET)


def variant_key(spec: CacheSpec, request, base: str, key: str | None, query: str,
                vary: str = "") -> str | None:
    """The entry's key with its query, vary, view and origin parts
    (:mod:`.variants`); None when too long or invalid."""
    if key is None:
        return None
    origin = origin_part(request.environ)
    if not (query or vary or spec.fixed):
        key = key + origin
        return key if len(key) <= MAX_KEY_LENGTH else None
    try:
        return check_key(entity_key(base, query, vary + spec.fixed) + origin, internal=True)
    except ValueError:
        return None


def request_vary(spec: CacheSpec, request) -> str | None:
    """The key's vary part for ``request``; None when it must bypass the cache (a
    per-user name without a value on an authenticated request).  Raises
    :class:`.vary.UnkeyableVary` for a value that is not a stable identifier."""
    if not spec.vary:
        return ""
    if spec.varies is None:  # @cached: bound at its first request
        spec.bind(request.registry)
    values = vary_rules.values(spec.varies or (), request, lambda: _authenticated(request))
    return None if values is None else vary_part(spec.vary, values)


def locate(spec: CacheSpec, request, matchdict) -> tuple[str, tuple[str, ...], str] | str:
    """``(key, tags, vary part)`` of the entry ``request`` reads, for the route's
    ``matchdict``; else why it bypasses the cache: the counter to count
    (``bypasses``, ``param_bypasses``, ``vary_bypasses``) or ``too_long``.  The
    one place the deriver (:func:`serve_cached`) and the early-hit tween build a
    key; counts nothing (the deriver does), logs a view's misconfiguration once."""
    try:
        base, tags, key = spec.resolve_match(matchdict)
    except KeyError as exc:
        spec.warn_once(f"no matchdict value for {exc}; requests are served uncached")
        return "bypasses"
    query = request_query(spec, request)
    if query is None:  # an undeclared parameter: never served (nor storing) a variant
        return "param_bypasses"
    try:
        vary = request_vary(spec, request)
    except UnkeyableVary as exc:
        spec.warn_once(str(exc), logging.ERROR)
        vary = None
    if vary is None:  # no stable per-user value: never a shared or another's entry
        return "vary_bypasses"
    key = variant_key(spec, request, base, key, query, vary)
    if key is None:
        spec.warn_once("a key is too long or invalid; such requests are served uncached")
        return "too_long"
    return key, tags, vary


def serve_entity(request, data: bytes, stats) -> Response | None:
    """The response a hit on ``data`` (a stored entity) gives ``request``: ``304``
    with the validator headers when ``If-None-Match`` matches its ETag (counted as
    ``not_modified``), else the stored headers and body as they are; both with
    ``X-Cache: HIT`` (a HEAD gets no body: WebOb drops it for HEAD).  None when
    ``data`` is not an entity.  The one place both the view deriver and the
    early-hit tween turn a stored entry into a response."""
    try:
        etag, headers, offset = http.entity_head(data)
    except ValueError:
        return None
    if http.matches(request, etag):
        stats.incr("not_modified")
        response = http.not_modified(headers)
        response.headers["X-Cache"] = "HIT"
        return response
    return http.replay(headers, data[offset:], "HIT")


def _served(response, request, spec: CacheSpec, stats, counter: str):
    stats.incr(counter)
    response.headers["X-Cache"] = _x_cache_miss(request)
    return response


def _x_cache_miss(request) -> str:
    """``MISS``, or ``BYPASS`` while the cache is disabled (``examcache.enabled = false``)."""
    return "MISS" if request.cache.policy.settings.enabled else "BYPASS"


#: reasons a response is not stored that need no warning (they are per request)
_ORDINARY = frozenset({"status", "empty HEAD body"})


def _refused(spec: CacheSpec, stats, reason: str) -> None:
    stats.incr("uncacheable")
    if reason not in _ORDINARY:
        spec.warn_once(f"a response was not stored: {reason}")


def _dirty(txn, policy) -> bool:
    """Did ``txn`` (captured while the view ran) write, by the end of its commit?"""
    from ..transaction import transaction_wrote

    return transaction_wrote(txn, policy)


def serve_cached(spec: CacheSpec, view, context, request):
    """Run ``view`` through the cache described by ``spec``.

    What is stored is decided on the final response (Django's
    ``UpdateCacheMiddleware``): the view's response is checked when it returns,
    then the fill waits for the end of the request (:class:`_Fill`)."""
    if request.method not in _CACHEABLE_METHODS:
        return view(context, request)
    stats = request.cache.policy.stats
    found = locate(spec, request, request.matchdict or {})
    if found == "too_long":
        stats.incr("bypasses")
        return view(context, request)
    if isinstance(found, str):  # the counter of the bypass
        return _served(view(context, request), request, spec, stats, found)
    key, tags, vary = found
    fill = _Fill(spec, view, context, request, personal=spec.per_user and bool(vary))
    cache = request.cache
    if spec.public or spec.per_user or not _authenticated(request):
        # (a request the router does not run -- pyramid.testing.DummyRequest -- never runs
        # its callbacks: decided on the view's response alone)
        value, data = cache.fetch(key, fill.create, spec.ttl, tags, _entity, checked=True,
                                  hold=fill.hold if isinstance(request, Request) else None)
        response = None if value is None else value[0]
    else:  # an authenticated request that may read but not fill (G5)
        data = cache.peek(key, tags)
        response = None if data is not None else fill.create()[0]
    if response is None:  # a hit: serve the stored bytes as they are
        response = serve_entity(request, data, stats)
        if response is None:  # not an entity: never a 500, never stored over here
            log.warning("cache key %r does not hold a response; not caching", key[:200])
            response = view(context, request)
            response.headers["X-Cache"] = "MISS"
        return response
    if fill.made and http.matches(request, fill.made[-1]):  # a miss with the client's entity
        stats.incr("not_modified")
        response = http.not_modified(response.headerlist)
    response.headers["X-Cache"] = _x_cache_miss(request)
    fill.out.append(response)
    return response


class _Fill:
    """One miss of a cached view: renders it and decides whether its response is stored.

    The view's response is checked when it returns (status, cookies,
    ``Cache-Control``, ``Vary`` covered by the key, session, CSRF token, no
    response callback added by the view); the fill then waits for the end of the
    request (a finished callback) and happens only if the request ended without an
    error and the response that went out -- after the response callbacks and
    ``NewResponse`` subscribers -- has the view's status, sets no cookie, is not
    private and has no ``Vary: *``, the request touched neither the session nor a
    CSRF token, and its transaction did not write.  What is stored is the view's
    response as it returned (the callbacks, subscribers and wrappers above run
    again on hits)."""

    def __init__(self, spec: CacheSpec, view, context, request, personal: bool) -> None:
        self.spec, self.view, self.context, self.request = spec, view, context, request
        self.cache = request.cache
        self.stats = self.cache.policy.stats
        #: the ETag of the response that may be stored
        self.made: list = []
        #: a per-user key of an authenticated request (the caller's own entry, a private
        #: cache): asked on a miss only
        self.personal: list = [] if personal else [False]
        #: the response :func:`serve_cached` returned
        self.out: list = []

    def create(self):
        spec, request = self.spec, self.request
        before = len(request.response_callbacks)
        response = self.view(self.context, request)
        if spec.vary_headers:
            http.add_vary(response, spec.vary_headers)
        if not self.personal:
            self.personal.append(_authenticated(request))
        reason = http.uncacheable(response, request, spec.covered, personal=self.personal[0])
        if reason is None and request.method == "HEAD" and not response.body:
            reason = "empty HEAD body"  # a view that skipped the body for HEAD: not the GET's
        if reason is None and len(request.response_callbacks) != before:
            reason = "the view added a response callback (it would not run on a hit)"
        if reason is not None:
            _refused(spec, self.stats, reason)
            return response, None
        etag, headers = http.prepare(response)
        self.made.append(etag)
        return response, codec.encode_entity(etag, headers, response.body)

    def hold(self, complete) -> None:
        from ..transaction import open_transaction

        request = self.request
        txn = open_transaction(request)
        sent: list = []
        request.add_response_callback(lambda _request, final: sent.append(final))

        def finished(_request) -> None:
            final = sent[-1] if sent else None  # what went out (a wrapper's, a tween's)
            reason: str | None
            if final is None or not self.out or getattr(request, "exception", None) is not None:
                reason = "the request ended in an error"
            else:
                reason = http.uncacheable(final, request, None, self.out[0].status_code,
                                          bool(self.personal and self.personal[0]))
                if reason is None and _dirty(txn, self.cache.policy):
                    reason = "its transaction wrote"
            if reason is not None:
                _refused(self.spec, self.stats, f"{reason} (decided on the final response)")
            complete(reason is None)

        request.add_finished_callback(finished)


def _entity(value) -> bytes | None:
    return value[1]


def _check_http_cache(options) -> None:
    http_cache = options.get("http_cache")
    if isinstance(http_cache, tuple) and len(http_cache) == 2 and isinstance(http_cache[1], dict):
        flags = http_cache[1]
        if flags.get("private") or flags.get("no_store"):
            raise ConfigurationError(
                f"cache={options.get('cache')!r} with http_cache={http_cache!r}: a response "
                f"declared private or no-store must not be cached; drop one of the two options")


#: the registry key of the (route name, spec) pairs checked once routes are connected
ROUTE_CHECKS = "pyramid_examcache.route_checks"


def _pattern_names(pattern: str) -> set[str] | None:
    """The matchdict names a route pattern provides (``{name}``, ``{name:regex}``,
    ``*name``); None if the pattern cannot be read with certainty."""
    names, i, depth, start = set(), 0, 0, 0
    while i < len(pattern):
        c = pattern[i]
        if c == "{":
            if depth == 0:
                start = i + 1
            depth += 1
        elif c == "}":
            depth -= 1
            if depth < 0:
                return None
            if depth == 0:
                names.add(pattern[start:i].split(":", 1)[0].strip())
        elif c == "*" and depth == 0:
            star = pattern[i + 1:]
            if not star.isidentifier():
                return None
            names.add(star)
            break
        i += 1
    return None if depth else names


def check_route(registry, route_name: str, spec: CacheSpec) -> None:
    """ConfigurationError when ``spec``'s templates name a value ``route_name``'s
    pattern cannot provide; checked at once if the route is connected already,
    else by :func:`check_routes` once the configuration is committed."""
    from pyramid.interfaces import IRoutesMapper

    mapper = registry.queryUtility(IRoutesMapper)
    route = None if mapper is None else mapper.get_route(route_name)
    if route is None:
        registry.setdefault(ROUTE_CHECKS, []).append((route_name, spec))
        return
    provided = _pattern_names(route.pattern)
    if provided is None or any(type(p).__module__ != "pyramid.predicates"
                               or type(p).__name__ == "CustomPredicate"
                               for p in route.predicates):
        return  # a pattern or a predicate we cannot read with certainty: checked per request
    if any(type(p).__name__ == "TraversePredicate" for p in route.predicates):
        provided.add("traverse")
    missing = [n for n in spec.names if n not in provided]
    if missing:
        raise ConfigurationError(
            f"cache={spec.key!r} (tags {spec.tags!r}) on route {route_name!r} "
            f"({route.pattern!r}): the route provides no {', '.join(map(repr, missing))}; "
            f"key templates are filled from the route's matchdict")


def check_routes(registry) -> None:
    """Check the cached views whose route was connected after them (an action
    ordered after every view and route)."""
    pending = registry.get(ROUTE_CHECKS) or []
    registry[ROUTE_CHECKS] = []
    for route_name, spec in pending:
        from pyramid.interfaces import IRoutesMapper

        mapper = registry.queryUtility(IRoutesMapper)
        if mapper is not None and mapper.get_route(route_name) is not None:
            check_route(registry, route_name, spec)


def cached_view(view, info):
    """View deriver for the ``cache``, ``cache_ttl``, ``cache_tags``, ``cache_vary``,
    ``cache_public`` and ``cache_params`` options."""
    options = info.options
    if info.exception_only:
        return view
    if options.get("cache") is None:
        note_view(info, None)  # (early hits: the route's first view may be this one)
        return view
    spec = CacheSpec(options["cache"], options.get("cache_ttl"), options.get("cache_tags", ()),
                     options.get("cache_vary", ()), options.get("cache_public", False),
                     options.get("cache_params", ()), options.get("accept"))
    spec.bind(info.registry)
    _check_http_cache(options)
    route_name = options.get("route_name")
    if route_name is not None:
        check_route(info.registry, route_name, spec)
    note_view(info, spec)

    def wrapper(context, request):
        return serve_cached(spec, view, context, request)

    return wrapper


# a view deriver's options (pyramid reads the attribute)
cached_view.options = (  # type: ignore[attr-defined]
    "cache", "cache_ttl", "cache_tags", "cache_vary", "cache_public", "cache_params")


def cached(key: str, ttl: int | None = None, tags: Iterable[str] = (), vary: Iterable[str] = (),
           public: bool = False, params: Iterable[str] = ()):
    """Decorator form for a view callable ``view(request)`` or ``view(context, request)``
    that returns a ``Response`` (use the view option for renderer views)::

        @view_config(route_name="exam")
        @cached("exam:{examId}", ttl=600, public=True)
        def exam(request): return Response(json_body=...)
    """
    spec = CacheSpec(key, ttl, tags, vary, public, params)

    def decorate(fn):
        request_only = takes_one_arg(fn, argname="request")

        def call(context, request):
            return fn(request) if request_only else fn(context, request)

        def wrapper(context, request):
            return serve_cached(spec, call, context, request)

        wrapper.__name__ = getattr(fn, "__name__", "cached_view")
        wrapper.__doc__ = fn.__doc__
        wrapper.__module__ = fn.__module__
        return wrapper

    return decorate
