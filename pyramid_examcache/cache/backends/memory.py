"""``memory://``: an in-process backend with the same semantics as Redis.

For embedded use (``development.ini``) and one process: leases, tag versions
and TTLs behave exactly as in :mod:`.redis` (a version a lookup creates lives
as long as the lease; a fill lengthens it to outlive the value stored under it;
a missing version invalidates); waiters are woken by a condition
variable instead of polling.  Expired entries are purged lazily and by a sweep
every ``SWEEP_EVERY`` writes, so memory stays bounded by what is live.
"""
from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

from .base import BYPASS_MS, Backend, Lookup, Status

SWEEP_EVERY = 1024


class MemoryBackend(Backend):
    errors = ()

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        # key -> (expires_at, value, tags, versions)
        self._values: dict[str, tuple[float, bytes, tuple[str, ...], tuple[str, ...]]] = {}
        # key -> (expires_at, token)
        self._leases: dict[str, tuple[float, str]] = {}
        # tag -> (expires_at, version)
        self._tags: dict[str, tuple[float, str]] = {}
        self._writes = 0

    # -- helpers (callers hold the lock) ------------------------------------
    def _live(self, table: dict, key: str):
        item = table.get(key)
        if item is None:
            return None
        if item[0] <= self._clock():
            del table[key]
            return None
        return item

    def _tag_version(self, tag: str) -> str | None:
        item = self._live(self._tags, tag)
        return item[1] if item else None

    def _valid(self, key: str):
        item = self._live(self._values, key)
        if item is None:
            return None
        _, value, tags, versions = item
        for tag, version in zip(tags, versions, strict=True):
            if self._tag_version(tag) != version:
                del self._values[key]
                return None
        return value

    def _sweep(self) -> None:
        self._writes += 1
        if self._writes % SWEEP_EVERY:
            return
        now = self._clock()
        for table in (self._values, self._leases, self._tags):
            for k in [k for k, item in table.items() if item[0] <= now]:
                del table[k]

    # -- the interface --------------------------------------------------------
    def lookup(self, key, token, lease_ttl, ttl, tags=()):
        with self._cond:
            value = self._valid(key)
            if value is not None:
                return Lookup(Status.HIT, value)
            lease = self._live(self._leases, key)
            if lease is not None:
                return Lookup(Status.BYPASS if lease[1] == "" else Status.WAIT)
            now = self._clock()
            self._leases[key] = (now + lease_ttl, token)
            versions = []
            for tag in tags:  # a version created here lives as long as the lease
                item = self._live(self._tags, tag)
                if item is None:
                    item = (now + lease_ttl, uuid.uuid4().hex)
                elif item[0] < now + lease_ttl:  # only ever lengthened
                    item = (now + lease_ttl, item[1])
                self._tags[tag] = item
                versions.append(item[1])
            self._sweep()
            return Lookup(Status.LEASED, None, tuple(versions))

    def fill(self, key, token, value, ttl, tags=(), versions=()):
        with self._cond:
            try:
                lease = self._live(self._leases, key)
                if lease is None or lease[1] != token:
                    return False
                del self._leases[key]
                now = self._clock()
                for tag, version in zip(tags, versions, strict=True):
                    item = self._live(self._tags, tag)
                    if item is None or item[1] != version:
                        return False
                    if item[0] < now + ttl:
                        self._tags[tag] = (now + ttl, version)
                self._values[key] = (now + ttl, bytes(value), tuple(tags), tuple(versions))
                self._sweep()
                return True
            finally:
                self._cond.notify_all()

    def release(self, key, token):
        with self._cond:
            lease = self._live(self._leases, key)
            if lease is not None and lease[1] == token:
                self._leases[key] = (self._clock() + BYPASS_MS / 1000, "")
            self._cond.notify_all()

    def invalidate(self, keys=(), tags=()):
        with self._cond:
            for key in keys:
                self._values.pop(key, None)
                self._leases.pop(key, None)
            for tag in tags:
                self._tags.pop(tag, None)
            self._cond.notify_all()

    def get(self, key, tags=()):
        with self._cond:
            return self._valid(key)

    def peek_local(self, key, tags=()):
        """As :meth:`get`: this backend's validated read is in-process (a dict and
        its lock), so every answer is servable without I/O."""
        with self._cond:
            return self._valid(key)

    def answers_locally(self) -> bool:
        return True

    def clear(self):
        with self._cond:
            self._values.clear()
            self._leases.clear()
            self._tags.clear()
            self._cond.notify_all()

    def wait(self, key: str, timeout: float) -> None:
        with self._cond:
            self._cond.wait(timeout)

    def __len__(self) -> int:
        with self._cond:
            return len(self._values)
