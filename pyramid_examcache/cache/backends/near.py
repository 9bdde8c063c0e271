"""How a process holds values read from Redis: the near-cache variants behind one interface.

:class:`NearCache` is the interface, and the variant without a near cache
(``off``): every read crosses to Redis.  The backend picks one variant when it is
built (:func:`~.redis.near_cache_mode`) and delegates every read to it:

* ``off`` -- :class:`NearCache`;
* ``check`` -- :class:`CheckedNearCache`, below;
* ``barrier`` and ``lease`` -- :class:`~.tracked_near.BarrierNearCache` and
  :class:`~.tracked_near.LeasedNearCache`, kept exact by Redis's invalidation
  messages (:mod:`.tracking`, :mod:`.read_lease`).

The *checked* near cache: every entry is keyed by the *stamp* of the fill that
stored it (the fill's random lease token, kept in Redis beside the value).  A hit
still asks Redis for the value's current stamp and tag versions, one small round
trip; only when they match is the local copy served, so the answer is exactly what
Redis holds at that moment (a stamp is never reused) -- G2 is untouched -- while
the value's bytes no longer cross the network and the parser on every hit.
Memory is bounded by :class:`ByteLRU`.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .read_lease import LeaseWriter


class ByteLRU:
    """LRU of ``key -> (stamp, bytes)`` bounded by total bytes; thread-safe."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple[bytes, bytes]] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> tuple[bytes, bytes] | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: str, stamp: bytes, data: bytes) -> None:
        if len(data) > self.max_bytes // 4:
            return  # one value must not flush everything else
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._size -= len(old[1])
            self._items[key] = (stamp, data)
            self._size += len(data)
            while self._size > self.max_bytes:
                _, (_, dropped) = self._items.popitem(last=False)
                self._size -= len(dropped)

    def discard(self, key: str) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._size -= len(old[1])

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._size = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        """Bytes of the values held (what ``examcache.near_cache_mb`` bounds)."""
        return self._size


class NearCache:
    """The near-cache interface, and the variant that holds nothing (``off``).

    ``fetch(key, tags, conn)`` is the backend's validating read, one round trip:
    ``(data, stamp)`` of ``key``'s value when it is valid and was stored under exactly
    ``tags``, else ``(None, None)``; ``conn`` is the backend's connection for the call.
    ``writer``: the writer side of read leases (:class:`~.read_lease.LeaseWriter`) when
    they are on, else None.
    """

    mode = "off"

    def __init__(self, fetch: Callable, writer: LeaseWriter | None = None) -> None:
        self._fetch = fetch
        self.writer = writer

    def get(self, key: str, tags: Sequence[str], conn) -> bytes | None:
        """The valid value of ``key`` stored under exactly ``tags``, else None."""
        return self._fetch(key, tags, conn)[0]

    def put(self, key: str, token: str, value: bytes) -> None:
        """A fill by ``token`` stored ``value`` (the stamp kept beside it is the token)."""

    def drop(self, keys: list[str], tags: list[str]) -> None:
        """This process invalidates ``keys`` and ``tags`` (before Redis is told)."""

    def clear(self) -> None:
        """Forget everything held (the backend's ``clear``)."""

    def peek_local(self, key: str, tags: Sequence[str] = ()) -> bytes | None:
        """A held value servable with no I/O and no wait (:meth:`.Backend.peek_local`)."""
        return None

    def held(self, key: str, tags: Sequence[str], conn) -> bytes | None:
        """A held value servable after a barrier; never a read from Redis
        (:meth:`.Backend.peek_after_barrier`)."""
        return None

    def lease_held(self) -> bool:
        """Is a read lease usable now (the operators' gauge)?"""
        return False

    def attach_stats(self, incr: Callable[[str], None]) -> None:
        if self.writer is not None:
            self.writer.incr = incr

    @property
    def nbytes(self) -> int:
        return 0

    def close(self) -> None:
        """Stop any thread and connection of its own."""


class CheckedNearCache(NearCache):
    """``check``: a held value is served once Redis confirmed its stamp and tag versions.

    ``fetch_stamp(key, tags, conn)``: the stamp of ``key``'s value when it is valid under
    exactly ``tags``, else None (the same round trip as ``fetch`` without the value)."""

    mode = "check"

    def __init__(self, max_bytes: int, fetch: Callable, fetch_stamp: Callable,
                 writer: LeaseWriter | None = None) -> None:
        super().__init__(fetch, writer)
        self._fetch_stamp = fetch_stamp
        self.lru = ByteLRU(max_bytes)

    def get(self, key, tags, conn):
        held = self.lru.get(key)
        if held is not None:  # only the stamp and tag versions cross the wire
            if self._fetch_stamp(key, tags, conn) == held[0]:
                return held[1]
            self.lru.discard(key)
        data, stamp = self._fetch(key, tags, conn)
        if data is not None and stamp:
            self.lru.put(key, stamp, data)
        return data

    def put(self, key, token, value):
        self.lru.put(key, token.encode(), bytes(value))

    def drop(self, keys, tags):
        for key in keys:
            self.lru.discard(key)

    def clear(self):
        self.lru.clear()

    @property
    def nbytes(self) -> int:
        return self.lru.nbytes
