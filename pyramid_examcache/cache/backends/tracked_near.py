"""A near cache kept exact by Redis's invalidation messages (``barrier`` and ``lease`` variants).

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
:class:`~.near.ByteLRU` (LRU by bytes).

The backend's variants (:class:`~.near.NearCache`'s interface): :class:`BarrierNearCache`
(``barrier``: a held value is served after a barrier) and :class:`LeasedNearCache`
(``lease``: with no barrier while this process holds a read lease, :mod:`.read_lease`).
Each owns its stream, lease and writer, and starts new ones in a forked child.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

import redis

from ..forking import after_fork_in_child
from .near import ByteLRU, NearCache
from .read_lease import LeaseWriter, ReadLease, new_reader_id, reader_tag
from .tracking import InvalidationStream


class TrackedNearCache:
    """The entries, their dependencies and deadlines (no I/O of its own)."""

    def __init__(self, max_bytes: int, value_key: Callable[[str], str],
                 tag_key: Callable[[str], str]) -> None:
        self.near = ByteLRU(max_bytes)
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


class BarrierNearCache(NearCache):
    """``barrier``: a held value is served after a barrier on the tracking stream (no
    command of its own); a value not held, or a barrier that fails, takes the validating
    read, whose value is inserted only if none of its keys changed meanwhile.

    ``fetch_expiring(key, tags, conn)``: ``(data, stamp, pttl)`` of ``key``'s value
    (``data`` None unless valid under exactly ``tags``), one round trip."""

    mode = "barrier"

    def __init__(self, client: redis.Redis, prefix: str, max_bytes: int,
                 barrier_timeout: float, fetch_expiring: Callable, lease_ms: int = 0) -> None:
        super().__init__(None)  # type: ignore[arg-type]  # get is overridden: no plain fetch
        self.client, self.prefix, self.max_bytes = client, prefix, max_bytes
        self.barrier_timeout, self.lease_ms = barrier_timeout, lease_ms
        self._fetch_expiring = fetch_expiring
        self._incr: Callable[[str], None] | None = None
        self._local = threading.local()  # (``waited_out``: :meth:`held`)
        self.tracked: TrackedNearCache  # both set by _start
        self.stream: InvalidationStream
        self.lease: ReadLease | None = None
        self._start()
        after_fork_in_child(self._after_fork)

    def _start(self) -> None:
        """A new tracked store and stream."""
        self.tracked = self._new_store()
        self.stream = self._new_stream({})
        self.stream.start()

    def _new_store(self) -> TrackedNearCache:
        prefix = self.prefix
        return TrackedNearCache(self.max_bytes, lambda k: f"{prefix}v:{k}",
                                lambda t: f"{prefix}t:{t}")

    def _new_stream(self, extra: dict) -> InvalidationStream:
        pool = self.client.connection_pool
        return InvalidationStream({**pool.connection_kwargs, **extra}, self.prefix,
                                  self._on_keys, self._on_flush,
                                  connection_class=pool.connection_class,
                                  handshake=self._handshake, probe=self._new_probe())

    #: run on each new tracking connection (:mod:`.fenced_near`: the Sentinel primary's epoch)
    _handshake: Callable | None = None

    def _new_probe(self):
        """The probe sent with each barrier (:mod:`.fenced_near`; none on one Redis)."""
        return None

    def _on_keys(self, redis_keys: list[str]) -> None:
        self.tracked.on_keys(redis_keys)

    def _on_flush(self) -> None:
        self.tracked.on_flush()

    def get(self, key, tags, conn):
        local = self._local
        if getattr(local, "waited_out", None) == key:
            # this thread's early peek (:meth:`held`) just failed the barrier for ``key``:
            # the read, without waiting for the barrier a second time
            local.waited_out = None
            data = None
        else:
            data, _ = self._after_barrier(key, tags, conn)
        return data if data is not None else self._read(key, tags, conn)

    def held(self, key, tags, conn) -> bytes | None:
        """The held value of ``key`` after a barrier that began after this call did, or None
        (not held, the barrier failed or timed out, the stream is unhealthy): no read.  A
        failed barrier is remembered for this thread's next :meth:`get` of ``key``, which
        then reads at once (a slow Redis costs one barrier timeout per request, not two)."""
        data, failed = self._after_barrier(key, tags, conn)
        self._local.waited_out = key if failed else None
        return data

    def _after_barrier(self, key, tags, conn) -> tuple[bytes | None, bool]:
        """``(held value after a barrier or None, did a barrier fail)``."""
        tracked = self.tracked
        if tracked.get(key, tags) is None:
            return None, False
        if not self.stream.barrier(self.barrier_timeout):
            return None, True
        return tracked.get(key, tags), False  # every invalidation before it is applied

    def _read(self, key, tags, conn) -> bytes | None:
        """The validating read, inserting what it read unless one of its keys changed
        since the mark (:class:`TrackedNearCache`)."""
        stream = self.stream
        token = stream.mark()
        data, stamp, ttl_ms = self._fetch_expiring(key, tags, conn)
        if data is not None and stamp:
            self.tracked.put(key, tags, stamp, data, stream, token, ttl_ms)
        return data

    def drop(self, keys, tags):  # at once here; the DELs' messages do it everywhere
        prefix = self.prefix
        self.tracked.on_keys([f"{prefix}v:{k}" for k in keys] + [f"{prefix}t:{t}" for t in tags])

    def clear(self):
        self.tracked.on_flush()

    def attach_stats(self, incr):
        self._incr = incr
        super().attach_stats(incr)

    @property
    def nbytes(self) -> int:
        return self.tracked.nbytes

    def close(self):
        self.stream.stop()

    def _after_fork(self) -> None:
        """In a forked child: the parent's socket, barrier numbers, held values (and lease)
        are the parent's.  Keep them untouched (closing would close the parent's
        connection) and start this process's own."""
        self._forked_from = (self.stream, self.lease, self.tracked)
        self._start()


class LeasedNearCache(BarrierNearCache):
    """``lease``: a held value is served with no barrier at all while this process holds a
    read lease (:mod:`.read_lease`); writes wait instead (:attr:`writer`)."""

    mode = "lease"
    lease: ReadLease  # set by _start

    def _start(self) -> None:
        """A new tracked store, stream, reader id, read lease and writer."""
        self.reader_id = reader_id = new_reader_id()
        self.tracked = self._new_store()
        self.stream = self._new_stream({"client_name": reader_tag(self.prefix) + reader_id})
        self.lease = ReadLease(self.client, self.stream, self.prefix, reader_id,
                               self.lease_ms, self.barrier_timeout)
        self.stream.start()
        self.lease.start()
        self.writer = LeaseWriter(self.client, self.prefix, self.lease_ms,
                                  own=self._own_caught_up, own_id=reader_id,
                                  off=self.lease.settled_off)
        self.writer.incr = self._incr

    def _on_keys(self, redis_keys):
        self.tracked.on_keys(redis_keys)
        self.lease.notice(redis_keys)

    def _on_flush(self):
        self.lease.revoke()
        self.tracked.on_flush()

    def get(self, key, tags, conn):
        if self.lease.valid():  # no barrier: the writers waited (G2)
            data = self.tracked.get(key, tags)
            if data is not None:
                return data
            return self._read(key, tags, conn)
        return super().get(key, tags, conn)

    def peek_local(self, key, tags=()):
        if self.lease.valid():
            return self.tracked.get(key, tags)
        return None

    def lease_held(self) -> bool:
        return self.lease.held()

    def _own_caught_up(self) -> bool:
        """After a write's fence: has this process applied every message before it? (Or
        can it not serve without a barrier anyway: its stream is down, and a reconnection
        flushes and revokes.)"""
        stream = self.stream
        return stream.barrier(self.barrier_timeout) or not stream.healthy

    def close(self):
        self.lease.stop()
        super().close()
