"""A bounded in-process copy of values recently read from Redis (a near cache).

Every entry is keyed by the *stamp* of the fill that stored it (the fill's
random lease token, kept in Redis beside the value).  A hit still asks Redis
for the value's current stamp and tag versions, one small round trip; only when
they match is the local copy served, so the answer is exactly what Redis holds
at that moment (a stamp is never reused) -- G2 is untouched -- while the value's
bytes no longer cross the network and the parser on every hit.
"""
from __future__ import annotations

import threading
from collections import OrderedDict


class NearCache:
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
