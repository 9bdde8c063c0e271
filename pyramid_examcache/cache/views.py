"""Cached views: the ``cache=`` view option (a view deriver) and ``@cached``.

::

    @view_config(route_name="exam_questions", renderer="json",
                 cache="exam:{examId}:questions", cache_ttl=7200,
                 cache_tags=("exam:{examId}",), cache_vary=("authenticated_userid",))

The key and tag templates are filled from ``request.matchdict``; each name in
``cache_vary`` appends ``|name=<request.name>`` to the key.  Only ``GET`` and
``HEAD`` are cached.  A hit serves the stored body bytes with the stored
Content-Type (no decoding, no rendering) and ``X-Cache: HIT``; a miss renders
once (the lease of :mod:`.policy`: concurrent misses wait for it), stores it if
it may and answers ``X-Cache: MISS``.

Never stored (G5): responses other than 200, responses that set a cookie or
carry ``Cache-Control: private/no-store``, and responses to an authenticated
request (an ``Authorization`` header or an ``authenticated_userid``) under a
key that does not vary by user.  Such requests may still be *served* a hit:
what is stored under a key that does not vary by user was rendered for an
anonymous request.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable

from pyramid.exceptions import ConfigurationError
from pyramid.response import Response
from pyramid.util import takes_one_arg

from . import codec
from .templates import escape, fields, fill

log = logging.getLogger(__name__)

#: request attributes whose use in ``cache_vary`` makes a key per user
USER_VARY = frozenset({"authenticated_userid", "authenticated_identity", "authorization",
                       "user", "user_id"})
_CACHEABLE_METHODS = frozenset({"GET", "HEAD"})


class CacheSpec:
    """A validated cache option: templates, ttl, tags, vary."""

    __slots__ = ("key", "ttl", "tags", "vary", "per_user")

    def __init__(self, key: str, ttl: Any = None, tags: Any = (), vary: Any = ()) -> None:
        if not isinstance(key, str) or not key:
            raise ConfigurationError(f"cache= must be a key template string, got {key!r}")
        try:
            fields(key)
        except ValueError as exc:
            raise ConfigurationError(f"cache={key!r}: {exc}") from None
        if ttl is not None and (not isinstance(ttl, int) or isinstance(ttl, bool) or ttl <= 0):
            raise ConfigurationError(f"cache_ttl must be a positive int (seconds), got {ttl!r}")
        tags = (tags,) if isinstance(tags, str) else tuple(tags or ())
        for tag in tags:
            try:
                fields(tag)
            except (ValueError, TypeError) as exc:
                raise ConfigurationError(f"cache_tags={tags!r}: {exc}") from None
        vary = (vary,) if isinstance(vary, str) else tuple(vary or ())
        for name in vary:
            if not isinstance(name, str) or not name.isidentifier():
                raise ConfigurationError(f"cache_vary entries must be request attribute names, "
                                         f"got {name!r}")
        self.key, self.ttl, self.tags, self.vary = key, ttl, tags, vary
        self.per_user = bool(USER_VARY.intersection(vary))

    def resolve(self, request) -> tuple[str, tuple[str, ...]]:
        """The concrete key and tags for ``request`` (KeyError: missing matchdict value)."""
        matchdict = request.matchdict or {}
        key = fill(self.key, matchdict)
        for name in self.vary:
            key += f"|{name}={escape(getattr(request, name, None))}"
        return key, tuple(fill(t, matchdict) for t in self.tags)


def _authenticated(request) -> bool:
    if request.headers.get("Authorization"):
        return True
    try:
        return request.authenticated_userid is not None
    except Exception:  # a security policy that cannot answer counts as authenticated
        return True


def _storable(response) -> bool:
    if response.status_code != 200 or response.headers.get("Set-Cookie"):
        return False
    cache_control = response.headers.get("Cache-Control", "").lower()
    return "private" not in cache_control and "no-store" not in cache_control


def serve_cached(spec: CacheSpec, view, context, request):
    """Run ``view`` through the cache described by ``spec``."""
    if request.method not in _CACHEABLE_METHODS:
        return view(context, request)
    try:
        key, tags = spec.resolve(request)
    except KeyError as exc:
        log.warning("cache key %r: no matchdict value for %s; not caching", spec.key, exc)
        return view(context, request)
    if spec.per_user or not _authenticated(request):
        response, data = request.cache.fetch(key, lambda: view(context, request), spec.ttl, tags,
                                             _encode)
    else:  # may read what anonymous requests stored, must not store (G5)
        data = request.cache.peek(key, tags)
        response = None if data is not None else view(context, request)
    if response is None:  # a hit: serve the stored bytes as they are
        content_type, body = codec.decode_response(data)
        response = Response(body=body, headerlist=[("Content-Type", content_type)])
        response.headers["X-Cache"] = "HIT"
        return response
    response.headers["X-Cache"] = "MISS"
    return response


def _encode(response) -> bytes | None:
    if not _storable(response):
        return None
    return codec.encode_response(response.headers.get("Content-Type", "application/octet-stream"),
                                 response.body)


def cached_view(view, info):
    """View deriver for the ``cache``, ``cache_ttl``, ``cache_tags``, ``cache_vary`` options."""
    options = info.options
    if options.get("cache") is None or info.exception_only:
        return view
    spec = CacheSpec(options["cache"], options.get("cache_ttl"), options.get("cache_tags", ()),
                     options.get("cache_vary", ()))

    def wrapper(context, request):
        return serve_cached(spec, view, context, request)

    return wrapper


cached_view.options = ("cache", "cache_ttl", "cache_tags", "cache_vary")


def cached(key: str, ttl: int | None = None, tags: Iterable[str] = (), vary: Iterable[str] = ()):
    """Decorator form for a view callable ``view(request)`` or ``view(context, request)``
    that returns a ``Response`` (use the view option for renderer views)::

        @view_config(route_name="exam")
        @cached("exam:{examId}", ttl=600)
        def exam(request): return Response(json_body=...)
    """
    spec = CacheSpec(key, ttl, tags, vary)

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
