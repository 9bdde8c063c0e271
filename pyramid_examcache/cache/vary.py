"""What a ``cache_vary`` name contributes to a cached view's key.

A vary value reaches a key only if it is a *stable identifier*: ``str``,
``int``, ``bytes``, ``UUID``, ``None`` or a tuple of these -- never ``str()``
of an arbitrary object (an ORM user, an identity dict: a memory address or a
different text per request would leak entries between users or grow the
store).  Where each name's value comes from:

* ``authenticated_userid`` -- ``request.authenticated_userid``;
* ``identity``, ``authenticated_identity``, ``user`` -- **also**
  ``request.authenticated_userid`` (the security policy's stable id for the
  identity object); an anonymous request whose named attribute is nevertheless
  set is not keyed (it bypasses the cache);
* ``user_id`` -- the request attribute, checked;
* ``authorization``, ``cookies``, ``accept``, ``accept_language``,
  ``accept_encoding``, ``user_agent``, ``host`` -- the raw request header;
* a name registered with ``config.add_cache_vary(name, key, per_user=...)`` --
  ``key(request)``, checked (this also overrides a built-in name);
* any other name -- the request attribute of that name, checked.

Per-user names (``authenticated_userid``, ``identity``,
``authenticated_identity``, ``user``, ``user_id``, ``authorization`` and
registered ``per_user=True`` names) key a response per caller: an
authenticated request for which such a name has no value (None) bypasses the
cache (counted as ``vary_bypasses``) -- it is never filed under the key that
anonymous requests share.  A value that is not a stable identifier raises
:class:`UnkeyableVary`; the view then serves uncached and logs it once.
Names whose value can never be an identifier (``session``, ``GET``, ...) are a
``ConfigurationError`` when the view is configured.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any
from uuid import UUID

from pyramid.exceptions import ConfigurationError

#: the registry key of the names registered with ``config.add_cache_vary``
REGISTRY_KEY = "pyramid_examcache.vary"
#: names keyed on ``request.authenticated_userid``
USERID_NAMES = frozenset({"authenticated_userid", "authenticated_identity", "identity", "user"})
#: built-in per-user names
PER_USER = USERID_NAMES | {"user_id", "authorization"}
#: names taken from a raw request header (WSGI environ key)
HEADER_NAMES = {
    "authorization": "HTTP_AUTHORIZATION",
    "cookies": "HTTP_COOKIE",
    "accept": "HTTP_ACCEPT",
    "accept_language": "HTTP_ACCEPT_LANGUAGE",
    "accept_encoding": "HTTP_ACCEPT_ENCODING",
    "user_agent": "HTTP_USER_AGENT",
    "host": "HTTP_HOST",
}
#: request attributes that are never identifiers (refused at configuration time)
NOT_IDENTIFIERS = frozenset({"session", "environ", "headers", "GET", "POST", "params",
                             "matchdict", "registry", "context", "root", "response", "json_body",
                             "json", "body", "body_file", "cache", "tm", "dbsession",
                             "matched_route", "exception", "exc_info", "accept_charset"})

_STABLE = (str, int, bytes, UUID, type(None))


class UnkeyableVary(TypeError):
    """A ``cache_vary`` value that is not a stable identifier."""

    def __init__(self, name: str, value: Any) -> None:
        super().__init__(
            f"cache_vary {name!r} is a {type(value).__name__}, not a stable identifier "
            f"(str, int, bytes, UUID, None or a tuple of these); register a key function "
            f"with config.add_cache_vary({name!r}, key=lambda request: ...)")
        self.name = name


def stable(value: Any) -> bool:
    """Is ``value`` a str, int, bytes, UUID, None or a tuple of these?"""
    if isinstance(value, tuple):
        return all(type(v) is not tuple and stable(v) for v in value)
    return isinstance(value, _STABLE)


class VaryName:
    """One ``cache_vary`` entry: how to read its value and whether it is per user."""

    __slots__ = ("name", "per_user", "read", "header")

    def __init__(self, name: str, per_user: bool, read: Callable[[Any], Any],
                 header: bool = False) -> None:
        self.name, self.per_user, self.read = name, per_user, read
        #: read from a request header alone (no identity, no application code)
        self.header = header


def _userid(name: str) -> Callable[[Any], Any]:
    def read(request):
        userid = request.authenticated_userid
        if userid is None and name != "authenticated_userid" \
                and getattr(request, name, None) is not None:
            return _Anonymous  # an identity without an id: not keyable
        return userid
    return read


def _header(environ_key: str) -> Callable[[Any], Any]:
    return lambda request: request.environ.get(environ_key)


def _attribute(name: str) -> Callable[[Any], Any]:
    return lambda request: getattr(request, name, None)


class _Anonymous:
    """Marks a per-user name set on a request that has no authenticated id."""


def resolve(names: tuple[str, ...], registered: dict | None) -> tuple[VaryName, ...]:
    """The :class:`VaryName` of each name (``registered``: ``config.add_cache_vary``'s)."""
    out = []
    for name in names:
        if registered and name in registered:
            key, per_user, _headers = registered[name]
            out.append(VaryName(name, per_user, key))
        elif name in NOT_IDENTIFIERS:
            raise ConfigurationError(
                f"cache_vary={name!r}: request.{name} is never a stable identifier; register "
                f"a key function with config.add_cache_vary({name!r}, key=lambda request: ...)")
        elif name in USERID_NAMES:
            out.append(VaryName(name, True, _userid(name)))
        elif name in HEADER_NAMES:
            out.append(VaryName(name, name in PER_USER, _header(HEADER_NAMES[name]), True))
        else:
            out.append(VaryName(name, name in PER_USER, _attribute(name)))
    return tuple(out)


def values(names: tuple[VaryName, ...], request, authenticated: Callable[[], bool]) -> list | None:
    """The vary values of ``request`` in order; None when the request must bypass
    (a per-user name without a value on an authenticated request).  Raises
    :class:`UnkeyableVary` for a value that is not a stable identifier."""
    out = []
    for vary in names:
        value = vary.read(request)
        if value is _Anonymous:
            return None
        if not stable(value):
            raise UnkeyableVary(vary.name, value)
        if value is None and vary.per_user and authenticated():
            return None
        out.append(value)
    return out


def add_cache_vary(config, name: str, key: Callable[[Any], Any], per_user: bool = False,
                   headers: tuple[str, ...] = ()) -> None:
    """``config.add_cache_vary(name, key, per_user=False, headers=())``: the value of
    ``cache_vary`` entry ``name`` is ``key(request)`` (a stable identifier; None for
    "none").  ``per_user=True``: the name keys responses per caller (see the module
    docstring).  ``headers``: the request headers the value comes from (added to the
    response's ``Vary``; a view may then send ``Vary`` with them).  Call it before the
    views that use the name are configured."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ConfigurationError(f"add_cache_vary: name must be an identifier, got {name!r}")
    if not callable(key):
        raise ConfigurationError(f"add_cache_vary({name!r}): key must be callable, got {key!r}")
    headers = (headers,) if isinstance(headers, str) else tuple(headers)
    if not all(isinstance(h, str) and h for h in headers):
        raise ConfigurationError(f"add_cache_vary({name!r}): headers must be header names")
    config.registry.setdefault(REGISTRY_KEY, {})[name] = (key, bool(per_user), headers)
