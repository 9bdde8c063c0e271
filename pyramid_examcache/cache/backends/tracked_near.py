"""A near cache kept exact by Redis's invalidation messages (issue 11's second block).

An entry is the value bytes of one cache key plus the Redis keys it depends on: its value
key and the version key of each of its tags. :class:`~.tracking.InvalidationStream` calls
:meth:`TrackedNearCache.on_keys` with every modified Redis key under the prefix; any entry
depending on one of them is dropped. Served after a successful barrier, an entry present
is therefore as fresh as a validating round trip would have found it (the argument is in
:mod:`.tracking`).

Inserting is where a stale value could slip in (a write between the read and the insert
whose message is processed before the insert). :meth:`put` checks the stream's token and
inserts under one lock, and :meth:`on_keys` drops under the same lock *after* the stream
recorded the keys as changed, so either the check sees the change (no insert) or the
drop runs after the insert (the entry goes). Memory is bounded by the wrapped
:class:`~.near.NearCache` (LRU by bytes).
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Iterable

from .near import NearCache
from .tracking import InvalidationStream


class TrackedNearCache:
    def __init__(self, max_bytes: int, value_key: Callable[[str], str],
                 tag_key: Callable[[str], str]) -> None:
        self.near = NearCache(max_bytes)
        self.value_key, self.tag_key = value_key, tag_key
        self._lock = threading.Lock()
        self._deps: dict[str, set[str]] = {}  # Redis key -> cache keys depending on it
        self._entry_deps: dict[str, tuple[str, ...]] = {}  # cache key -> its Redis keys
        self._entry_tags: dict[str, tuple[str, ...]] = {}  # cache key -> the tags it was put with
        self._expires: dict[str, float] = {}  # cache key -> monotonic deadline (Redis's TTL)

    def get(self, key: str, tags: Iterable[str] | None = None) -> bytes | None:
        """The held bytes of ``key`` -- if stored under exactly ``tags`` (when given) and
        not past the TTL the value had in Redis when it was read."""
        item = self.near.get(key)
        if item is None:
            return None
        if tags is not None and self._entry_tags.get(key) != tuple(tags):
            return None
        deadline = self._expires.get(key)
        if deadline is not None and time.monotonic() >= deadline:
            with self._lock:
                self._forget(key)
            return None
        return item[1]

    def put(self, key: str, tags: Iterable[str], stamp: bytes, data: bytes,
            stream: InvalidationStream, token: tuple[int, int] | None,
            ttl_ms: int | None = None) -> bool:
        """Insert ``data`` read after ``stream.mark()`` gave ``token``, unless one of its
        Redis keys changed since (then nothing is inserted; returns whether it was).
        ``ttl_ms``: the value's remaining TTL in Redis (its ``PTTL``), kept as a deadline."""
        deps = (self.value_key(key), *(self.tag_key(t) for t in tags))
        with self._lock:
            if not stream.unchanged(token, deps):
                return False
            self._forget(key)
            self.near.put(key, stamp, data)
            if self.near.get(key) is None:  # too large for the near cache
                return False
            self._entry_deps[key] = deps
            self._entry_tags[key] = tuple(tags)
            if ttl_ms is not None and ttl_ms > 0:
                self._expires[key] = time.monotonic() + ttl_ms / 1000
            for dep in deps:
                self._deps.setdefault(dep, set()).add(key)
            return True

    def on_keys(self, redis_keys: Iterable[str]) -> None:
        with self._lock:
            for redis_key in redis_keys:
                for key in self._deps.pop(redis_key, ()):
                    self._forget(key)

    def on_flush(self) -> None:
        with self._lock:
            self.near.clear()
            self._deps.clear()
            self._entry_deps.clear()
            self._entry_tags.clear()
            self._expires.clear()

    def _forget(self, key: str) -> None:
        self.near.discard(key)
        self._expires.pop(key, None)
        self._entry_tags.pop(key, None)
        for dep in self._entry_deps.pop(key, ()):
            keys = self._deps.get(dep)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._deps[dep]

    @property
    def nbytes(self) -> int:
        return self.near.nbytes
