"""The narrow storage interface every cache backend implements.

A backend stores opaque ``bytes`` under a key and implements four atomic
operations that together give *leases* (Facebook's memcache, NSDI 2013) and
*tag versions*:

``lookup(key, token, lease_ttl, ttl, tags)``
    One atomic step.  If a valid value is stored, return ``HIT`` with it (a
    value is valid while every tag it was stored under still has the version
    it was stored with).  Otherwise, if nobody holds the key's lease, grant it
    to ``token`` and return ``LEASED`` with the current versions of ``tags``
    (creating a fresh random version for a tag that has none).  If somebody
    else holds it, return ``WAIT``; if the holder declared its result
    uncacheable, return ``BYPASS``.

``fill(key, token, value, ttl, tags, versions)``
    Store ``value`` only if ``token`` still holds the lease *and* every tag
    still has the version seen at ``lookup``.  Returns whether it stored.

``release(key, token)``
    The holder gives up its lease without storing; for a short while other
    readers are told to ``BYPASS`` (load without waiting) instead of taking
    turns on a value that will not be stored.

``invalidate(keys, tags)``
    Delete the values *and the leases* of ``keys`` and the versions of
    ``tags``.  Deleting a lease is what makes an in-flight ``fill`` (which may
    carry data read before the write committed) fail; deleting a tag version
    makes every value stored under it invalid and every in-flight fill under
    it fail, because a new version is always a fresh random string.

The policy (``policy.py``) builds get-or-set on top of these; backends know
nothing of JSON, views or transactions.
"""
from __future__ import annotations

import abc
import enum
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


class Status(enum.IntEnum):
    HIT = 1
    LEASED = 2
    WAIT = 3
    BYPASS = 4


@dataclass(frozen=True, slots=True)
class Lookup:
    status: Status
    value: bytes | None = None
    versions: tuple[str, ...] = field(default=())


#: how long readers are told to bypass after a holder released without storing
BYPASS_MS = 1000

#: separator of tag names and versions inside stored metadata (never in a tag:
#: keys and tags are escaped by the policy before they reach a backend)
SEP = "\x1f"


class Backend(abc.ABC):
    """Storage behind the cache policy. Implementations must be thread-safe."""

    #: exceptions that mean "the store is unreachable or too slow" (fail open)
    errors: tuple[type[BaseException], ...] = ()

    @abc.abstractmethod
    def lookup(self, key: str, token: str, lease_ttl: float, ttl: int,
               tags: Sequence[str] = ()) -> Lookup: ...

    @abc.abstractmethod
    def fill(self, key: str, token: str, value: bytes, ttl: int,
             tags: Sequence[str] = (), versions: Sequence[str] = ()) -> bool: ...

    @abc.abstractmethod
    def release(self, key: str, token: str) -> None: ...

    @abc.abstractmethod
    def invalidate(self, keys: Iterable[str] = (), tags: Iterable[str] = ()) -> None: ...

    @abc.abstractmethod
    def get(self, key: str, tags: Sequence[str] = ()) -> bytes | None:
        """The stored value if valid, without leasing (``tags``: those the caller
        expects it was stored under, a hint for a faster read; validity is always
        checked against the tags it was stored with)."""

    def peek_local(self, key: str, tags: Sequence[str] = ()) -> bytes | None:
        """A value servable without I/O or waiting; None whenever unsure.

        What :meth:`get` would return, but only when this process can prove it
        valid by itself -- no network round trip, no blocking wait (the early-hit
        tween calls it before pyramid_tm and the router, :mod:`..early`).  The
        default says "unsure" for every key: callers then take the ordinary path
        (``lookup``/``get``).  ``tags`` as for :meth:`get`."""
        return None

    def answers_locally(self) -> bool:
        """Can :meth:`peek_local` ever return a value here (known from the
        configuration)?  False by default; the early-hit tween is installed only
        where it or :meth:`answers_after_barrier` is True."""
        return False

    def peek_after_barrier(self, key: str, tags: Sequence[str] = ()) -> bytes | None:
        """A held value servable after this process's ordering barrier; None whenever unsure.

        What :meth:`get` would return from the near cache, after the same barrier wait
        (``docs/design/tracking.md``; on Sentinel and Cluster with its mastership probe,
        ``docs/design/topologies.md``), but never the validating read: a value not held,
        a barrier that fails or a stream that is unhealthy give None, and the caller takes
        the ordinary path.  May wait up to the barrier's timeout (the early-hit tween and
        the WSGI fast path call it where :meth:`answers_locally` is False)."""
        return None

    def answers_after_barrier(self) -> bool:
        """Can :meth:`peek_after_barrier` ever return a value here (the ``barrier`` near
        cache)?  False by default."""
        return False

    @abc.abstractmethod
    def clear(self) -> None:
        """Delete everything this backend stored under its prefix."""

    def ping(self) -> None:  # noqa: B027 (a default: nothing to check)
        """Raise one of ``errors`` if the store is unreachable."""

    def wait(self, key: str, timeout: float) -> None:
        """Block up to ``timeout`` seconds or until ``key`` may have changed."""
        time.sleep(timeout)

    def near_cache_bytes(self) -> int:
        """Bytes held in this process's near cache (0 without one)."""
        near = getattr(self, "_near", None)
        return near.nbytes if near is not None else 0

    def read_lease_valid(self) -> bool:
        """Does this process hold a valid read lease (held values served with no I/O)?"""
        return False

    def attach_stats(self, incr) -> None:  # noqa: B027 (a default: nothing to count)
        """``incr(name)`` counts the backend's own events (a :class:`..stats.Stats`'s)."""

    def close(self) -> None:  # noqa: B027 (a default: nothing to release)
        """Release connections."""
