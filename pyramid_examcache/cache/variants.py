"""The key of one stored variant of a cached view, and how invalidating a key
reaches every variant.

A cached view's entry for the key template ``exam:{examId}:questions`` lives at::

    @view:exam:1:questions?page=2|authenticated_userid=<digest>

* ``@view:`` -- the view namespace.  ``get_or_set`` values live under the bare
  key; public keys and tags may not start with ``@`` (:func:`.policy.check_key`),
  so a JSON value and a rendered response never share a key.
* ``?page=2`` -- the query parameters the view declares (``cache_params``),
  sorted by name, repeated values kept in their order, names and values
  percent-encoded (so ``&``, ``=``, ``|``, ``?`` in a value cannot forge another
  variant).  A request with a parameter the view did not declare is not cached at
  all (:func:`query_part` returns None): it is never served another variant.
* ``|name=<digest>`` -- one per ``cache_vary`` name, in declaration order: the
  first 128 bits of SHA-256 over the value's type and text, in hex.  Only
  stable identifiers reach it (:mod:`.vary`).  Every vary value is hashed, so a
  bearer token, a session id or an e-mail address never appears in a Redis key
  name; a low-entropy value such as a user id is not a secret.  128 bits make
  an accidental collision -- which would serve one caller another's copy --
  negligible.  A view with an ``accept=`` predicate adds ``|@accept=<value>``:
  two views of one route that differ by ``accept`` never share an entry.
* ``#<scheme>://<host name><SCRIPT_NAME>`` -- the request's scheme, host name
  and mount point (escaped), as Django keys a page on its absolute URL: a body
  with links built from a forged ``Host`` never reaches another host's clients.
  The port is left out: the processes of one site share entries
  (``docs/design/per-user.md``).

How ``invalidate("exam:1:questions")`` reaches ``?page=2`` (and every vary
variant): every view entry is stored under one implicit tag, ``@key:`` + its
base key (:func:`key_tag`), besides the view's own ``cache_tags``; the policy
invalidates that tag whenever it invalidates the key (the ORM's
``__cache_keys__``, ``request.cache.invalidate``, the durable log's replays, the
deferred retries: they all end in the policy's ``_send``).  A tag invalidation
is what the lease protocol already proves safe (G2: a fill whose tag version
changed is refused; a lost tag version invalidates, never resurrects), so the
variants need no bookkeeping of their own: no member sets, nothing unbounded,
and one extra name in the same ``DEL``.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from .templates import escape

#: first character of the add-on's internal keys and tags (refused in public ones)
RESERVED = "@"
VIEW_NAMESPACE = "@view:"
KEY_TAG = "@key:"
#: characters a view's key template may not contain (they delimit the variant parts)
DELIMITERS = "?|#"


def key_tag(key: str) -> str:
    """The implicit tag of every view entry whose base key is ``key``."""
    return KEY_TAG + key


def digest(value: Any) -> str:
    """128-bit hex SHA-256 of ``value``'s type and text (None and "None" differ)."""
    text = f"{type(value).__name__}:{value}"
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def query_part(declared: frozenset[str], query) -> str | None:
    """The normalised declared query parameters of ``query`` (a WebOb MultiDict):
    ``""`` when none is present, ``"?a=1&b=x&b=y"`` else; None when ``query`` holds a
    parameter that is not declared (the request bypasses the cache)."""
    if not query:
        return ""
    names = set(query.keys())
    if not names <= declared:
        return None
    parts = [f"{escape(name)}={escape(v)}" for name in sorted(names) for v in query.getall(name)]
    return "?" + "&".join(parts)


def vary_part(names: Iterable[str], values: Iterable[Any]) -> str:
    """The vary part for ``values`` (stable identifiers, :mod:`.vary`) of ``names``."""
    return "".join(f"|{name}={digest(value)}" for name, value in zip(names, values, strict=True))


@lru_cache(maxsize=256)
def _origin(scheme: str, host: str, script_name: str) -> str:
    if ":" in host and not host.endswith("]"):  # a port (not the end of an IPv6 literal)
        host = host.rsplit(":", 1)[0]
    return "#" + escape(f"{scheme}://{host.lower()}{script_name}")


def origin_part(environ) -> str:
    """``#<scheme>://<host name><SCRIPT_NAME>`` of a WSGI request (see the module
    docstring)."""
    host = environ.get("HTTP_HOST") or environ.get("SERVER_NAME", "")
    return _origin(environ.get("wsgi.url_scheme", "http"), host[:300],
                   environ.get("SCRIPT_NAME", "")[:300])


def entity_key(base: str, query: str, vary: str) -> str:
    return f"{VIEW_NAMESPACE}{base}{query}{vary}"
