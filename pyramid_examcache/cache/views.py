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
:mod:`.policy`: concurrent misses wait for it), stores it if it may and answers
``X-Cache: MISS``.  A request with a query parameter the view did not declare
runs the view without the cache (counted as ``param_bypasses``).  HEAD shares
the GET entry: a hit answers with the GET's headers (and its Content-Length)
without a body; a HEAD miss stores what the view rendered (Pyramid renders the
whole body for HEAD) unless the body is empty -- a view that skips the body for
HEAD never leaves an empty entry for GETs.  What is stored, replayed, and
answered ``304`` is :mod:`.http`'s business.

Who may fill a shared key (G5, H1): **a view declared ``cache_public=True``
promises that its response is the same whoever asks, so responses to
authenticated requests are stored under its shared key and served to everyone;
without it, a response to an authenticated request (an ``Authorization`` header
or an ``authenticated_userid``) is stored only under a key that varies by user
(``cache_vary``), though such a request may still be served what anonymous
requests stored.**  ``cache_public`` together with a per-user ``cache_vary`` is
a configuration error.  Per-user responses get ``Vary`` for the request headers
they vary on (``Authorization``; ``Authorization, Cookie`` for an identity),
merged into the view's own ``Vary``.

Deriver order: ``cached_view`` sits at the default place of an added deriver,
under ``decorated_view`` and over ``rendered_view``, i.e. inside Pyramid's
``secured_view`` (permission checks run before any hit) and inside
``http_cached_view``.  So the ``http_cache`` view option wraps our responses:
its ``Cache-Control``/``Expires`` are computed afresh on every response -- MISS,
HIT and 304 alike -- rather than stored (a stored ``Expires`` would go stale).
A ``Cache-Control`` the view sets itself is stored and replayed.  An
``http_cache`` declaring ``private`` or ``no_store`` on a cached view is refused
at configuration time: it would be added after the store, so the cache could not
honour it.

Early hits: where it can prove the answer is the same, the tween of :mod:`.early`
serves a hit before pyramid_tm and the router; it finds this deriver's
:class:`CacheSpec` on the wrapper (``SPEC_ATTR``), computes the same key
(:func:`request_query`, :func:`variant_key`) and builds the response with
:func:`serve_entity`, the function this deriver's hits use.
"""
from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any, Iterable

from pyramid.exceptions import ConfigurationError
from pyramid.response import Response
from pyramid.util import takes_one_arg

from . import codec, http
from .policy import check_key
from .templates import fields, fill
from .variants import DELIMITERS, RESERVED, entity_key, key_tag, query_part, vary_part

log = logging.getLogger(__name__)

#: request attributes whose use in ``cache_vary`` makes a key per user
USER_VARY = frozenset({"authenticated_userid", "authenticated_identity", "identity",
                       "authorization", "user", "user_id"})
_CACHEABLE_METHODS = frozenset({"GET", "HEAD"})
#: the attribute of the ``cache=`` deriver's wrapper holding its :class:`CacheSpec`
SPEC_ATTR = "__examcache_spec__"
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
                 "_names", "_resolved")

    def __init__(self, key: str, ttl: Any = None, tags: Any = (), vary: Any = (),
                 public: Any = False, params: Any = ()) -> None:
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
        params = _names(params, "cache_params")
        self.key, self.ttl, self.tags, self.vary = key, ttl, tags, vary
        self.public, self.params = public, frozenset(params)
        self.vary_headers = tuple(dict.fromkeys(
            h for name in vary for h in http.VARY_HEADERS.get(name, ())))
        #: the matchdict names the templates use, in order
        self._names = tuple(dict.fromkeys(n for t in (key, *tags) for n in fields(t)))
        # Filling, escaping and checking the templates gives the same answer for the
        # same values: done once per distinct set of short values, not per request
        # (bounded: at most RESOLVED_MAX entries of at most RESOLVED_CHARS characters).
        self._resolved = lru_cache(maxsize=RESOLVED_MAX)(self._resolve)

    def _resolve(self, values: tuple[str, ...]) -> tuple[str, tuple[str, ...], str | None]:
        matchdict = dict(zip(self._names, values))
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
        """:meth:`resolve` for a route's ``matchdict`` (the early-hit tween has it
        before the router sets ``request.matchdict``)."""
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
    except Exception:  # a security policy that cannot answer counts as authenticated
        return True


def request_query(spec: CacheSpec, request) -> str | None:
    """The key's query part for ``request`` (:func:`.variants.query_part`): ``""``
    without a query string (no ``request.GET`` built), None when the request
    carries a parameter ``spec`` does not declare (it must bypass the cache)."""
    if request.environ.get("QUERY_STRING") == "":  # the common case: no request.GET to build
        return ""
    return query_part(spec.params, request.GET)


def variant_key(spec: CacheSpec, request, base: str, key: str | None, query: str) -> str | None:
    """The entry's key with its query and vary parts; None when too long or invalid."""
    if key is not None and (query or spec.vary):
        try:
            return check_key(entity_key(base, query, vary_part(spec.vary, request)),
                             internal=True)
        except ValueError:
            return None
    return key


def serve_entity(request, data: bytes, stats) -> Response | None:
    """The response a hit on ``data`` (a stored entity) gives ``request``: ``304``
    with the validator headers when ``If-None-Match`` matches its ETag (counted as
    ``not_modified``), else the stored headers and body as they are; both with
    ``X-Cache: HIT`` (a HEAD gets no body: WebOb drops it for HEAD).  None when
    ``data`` is not an entity.  The one place both the view deriver and the
    early-hit tween (:mod:`.early`) turn a stored entry into a response."""
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


def serve_cached(spec: CacheSpec, view, context, request):
    """Run ``view`` through the cache described by ``spec``."""
    if request.method not in _CACHEABLE_METHODS:
        return view(context, request)
    cache = request.cache
    stats = cache.policy.stats
    try:
        base, tags, key = spec.resolve(request)
    except KeyError as exc:
        log.warning("cache key %r: no matchdict value for %s; not caching", spec.key, exc)
        return view(context, request)
    query = request_query(spec, request)
    if query is None:  # an undeclared parameter: never served (nor storing) a variant
        stats.incr("param_bypasses")
        response = view(context, request)
        response.headers["X-Cache"] = "MISS"
        return response
    key = variant_key(spec, request, base, key, query)
    if key is None:
        log.warning("cache key for %r too long or invalid; not caching", spec.key)
        stats.incr("bypasses")
        return view(context, request)
    prepared: list[str] = []  # the ETag of a response that may be stored

    def create():
        response = view(context, request)
        if spec.vary_headers:
            http.add_vary(response, spec.vary_headers)
        reason = http.uncacheable(response, request)
        if reason is None and request.method == "HEAD" and not response.body:
            reason = "empty HEAD body"  # a view that skipped the body for HEAD: not the GET's
        if reason is not None:
            stats.incr("uncacheable")
            return response, None
        etag, headers = http.prepare(response)
        prepared.append(etag)
        return response, codec.encode_entity(etag, headers, response.body)

    if spec.public or spec.per_user or not _authenticated(request):
        value, data = cache.fetch(key, create, spec.ttl, tags, _entity, checked=True)
        response = None if value is None else value[0]
    else:  # an authenticated request that may read but not fill (G5)
        data = cache.peek(key, tags)
        response = None if data is not None else create()[0]
    if response is None:  # a hit: serve the stored bytes as they are
        response = serve_entity(request, data, stats)
        if response is None:  # not an entity: never a 500, never stored over here
            log.warning("cache key %r does not hold a response; not caching", key[:200])
            response = view(context, request)
            response.headers["X-Cache"] = "MISS"
        return response
    if prepared and http.matches(request, prepared[-1]):  # a miss with the client's entity
        stats.incr("not_modified")
        response = http.not_modified(response.headerlist)
    response.headers["X-Cache"] = "MISS"
    return response


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


def cached_view(view, info):
    """View deriver for the ``cache``, ``cache_ttl``, ``cache_tags``, ``cache_vary``,
    ``cache_public`` and ``cache_params`` options."""
    options = info.options
    if options.get("cache") is None or info.exception_only:
        return view
    spec = CacheSpec(options["cache"], options.get("cache_ttl"), options.get("cache_tags", ()),
                     options.get("cache_vary", ()), options.get("cache_public", False),
                     options.get("cache_params", ()))
    _check_http_cache(options)

    def wrapper(context, request):
        return serve_cached(spec, view, context, request)

    setattr(wrapper, SPEC_ATTR, spec)  # how :mod:`.early` finds a cached view in a chain
    return wrapper


cached_view.options = ("cache", "cache_ttl", "cache_tags", "cache_vary", "cache_public",
                       "cache_params")


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
