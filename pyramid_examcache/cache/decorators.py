"""``cache_on_arguments``: a function's result cached under a key made of its arguments.

dogpile.cache's ``region.cache_on_arguments``, on ``request.cache``::

    from pyramid_examcache import cache_on_arguments

    @cache_on_arguments(ttl=600, tags=lambda request, exam_id: [f"exam:{exam_id}"])
    def exam_summary(request, exam_id: int) -> dict:
        ...

    exam_summary(request, 7)             # request.cache.get_or_set(<key>, ...)
    exam_summary.invalidate(request, 7)  # request.cache.invalidate(<key>): after the commit
    exam_summary.key(request, 7)         # "myapp.exams:exam_summary|[7]"

Where the cache is: the argument named ``request`` -- a Pyramid request (its
``request.cache``; in a script, ``bootstrap()``'s ``env["request"]``), a
:class:`.RequestCache` or a :class:`.CachePolicy` -- or, in a method without a
``request`` parameter, ``self.request`` (a view class).

The key is ``<namespace>:<qualified name>|<the arguments as JSON>`` (``namespace``
defaults to the function's module).  ``request``, ``self`` and ``cls`` are not part of
it (as in dogpile: the instances of a class share entries); defaults are applied, so
``f(r, 1)`` and ``f(r, x=1)`` share one.  Arguments must be JSON values with one
spelling (None, bool, int, finite float, str, and lists, tuples and str-keyed dicts of
them): any other raises :class:`NotJSONArgument` (a ``TypeError``) naming the function
and the parameter -- a ``repr`` is no stable key.  A key over 1024 characters has its
argument part replaced by its SHA-256.

The value goes through ``get_or_set``: one load per cold key across threads and
processes, JSON values only (hits and misses alike return what JSON gives back), not
read or stored in a transaction that has written.  ``tags``: a list, or a callable
taking the function's arguments.  ``ttl``: seconds (None: ``examcache.default_ttl``).
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import json
import math
from collections.abc import Callable, Iterable
from typing import Any

from .policy import MAX_KEY_LENGTH, CachePolicy, RequestCache, check_key, check_ttl

__all__ = ["NotJSONArgument", "cache_on_arguments"]

#: parameters that locate the cache or the instance, never part of the key
_NOT_KEYED = ("request", "self", "cls")


class NotJSONArgument(TypeError):
    """An argument of a ``cache_on_arguments`` function that cannot be part of its key."""

    def __init__(self, function: str, parameter: str, value: Any) -> None:
        self.function, self.parameter = function, parameter
        super().__init__(
            f"{function}: argument {parameter!r} is a {type(value).__qualname__}; "
            f"cache_on_arguments keys are made of JSON arguments only (None, bool, int, "
            f"finite float, str, and lists, tuples and str-keyed dicts of them)")


def _json_arg(value: Any) -> bool:
    if value is None or isinstance(value, (str, bool, int)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(_json_arg(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_arg(v) for k, v in value.items())
    return False


def cache_on_arguments(namespace: str | None = None, ttl: int | None = None,
                       tags: Iterable[str] | Callable[..., Iterable[str]] = (),
                       ) -> Callable[[Callable[..., Any]], CachedFunction]:
    """Cache the decorated function's result (see the module's documentation)."""
    if ttl is not None:
        check_ttl(ttl)
    if not callable(tags):
        tags = tuple(tags)

    def decorate(fn: Callable[..., Any]) -> CachedFunction:
        return CachedFunction(fn, namespace, ttl, tags)

    return decorate


class CachedFunction:
    """A function decorated with :func:`cache_on_arguments` (a descriptor: methods too)."""

    def __init__(self, fn: Callable[..., Any], namespace: str | None, ttl: int | None,
                 tags: Any) -> None:
        functools.update_wrapper(self, fn)
        self.fn, self.ttl, self.tags = fn, ttl, tags
        self.signature = inspect.signature(fn)
        names = list(self.signature.parameters)
        self.via_self = "request" not in names and names[:1] == ["self"]
        if "request" not in names and not self.via_self:
            raise TypeError(f"{fn.__qualname__}: cache_on_arguments needs a 'request' "
                            f"parameter (or a method whose self has a .request)")
        self.prefix = f"{namespace or fn.__module__}:{fn.__qualname__}|"
        check_key(self.prefix)

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        return self if obj is None else _Bound(self, obj)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        cache, key = self.locate(args, kwargs)
        tags = self.tags(*args, **kwargs) if callable(self.tags) else self.tags
        return cache.get_or_set(key, lambda: self.fn(*args, **kwargs), self.ttl, tags)

    def invalidate(self, *args: Any, **kwargs: Any) -> None:
        """Invalidate the entry of these arguments: ``request.cache.invalidate`` (after
        the request's transaction commits), or at once given a :class:`.CachePolicy`."""
        cache, key = self.locate(args, kwargs)
        if isinstance(cache, CachePolicy):
            cache.invalidate_now([key])
        else:
            cache.invalidate(key)

    def key(self, *args: Any, **kwargs: Any) -> str:
        """The cache key of these arguments."""
        return self.locate(args, kwargs)[1]

    def locate(self, args: tuple, kwargs: dict) -> tuple[Any, str]:
        """``(cache, key)`` for a call with ``args`` and ``kwargs``."""
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        arguments = bound.arguments
        holder = arguments["self"].request if self.via_self else arguments["request"]
        cache = holder if isinstance(holder, (CachePolicy, RequestCache)) else holder.cache
        keyed = []
        for name, value in arguments.items():
            if name in _NOT_KEYED:
                continue
            if not _json_arg(value):
                raise NotJSONArgument(self.fn.__qualname__, name, value)
            keyed.append(value)
        text = json.dumps(keyed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        key = self.prefix + text
        if len(key) > MAX_KEY_LENGTH:
            key = self.prefix + "sha256:" + hashlib.sha256(text.encode()).hexdigest()
        return cache, key


class _Bound:
    """A :class:`CachedFunction` read from an instance: ``self`` given."""

    def __init__(self, cached: CachedFunction, obj: Any) -> None:
        self.cached, self.obj = cached, obj
        functools.update_wrapper(self, cached.fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.cached(self.obj, *args, **kwargs)

    def invalidate(self, *args: Any, **kwargs: Any) -> None:
        self.cached.invalidate(self.obj, *args, **kwargs)

    def key(self, *args: Any, **kwargs: Any) -> str:
        return self.cached.key(self.obj, *args, **kwargs)
