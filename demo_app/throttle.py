"""Rate limits of the demo: fixed-window counters (login attempts per client,
sign-ups per client and per target address, a daily cap per target address),
claims (one verification re-send per address per interval) and backoff (wrong
passwords per address + client: a growing wait once some are used up).

Kept in Redis when ``examcache.redis_url`` is ``redis://``, ``rediss://`` or
``unix://`` (so every process shares the counters), in process memory
otherwise.  Keys live under ``examcache.key_prefix`` + ``demo:throttle:``;
addresses are hashed into the key, never stored in clear.

Redis unreachable: the limiter fails open (the request is allowed and a
warning logged) -- the same choice as the cache (G4); a login still costs an
argon2 verification, so the database is not exposed by it.
"""
from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from typing import Protocol

log = logging.getLogger(__name__)

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


class Store(Protocol):
    def incr(self, key: str, window: int) -> int: ...

    def claim(self, key: str, ttl: int) -> bool: ...

    def lock(self, key: str, ttl: int) -> None: ...

    def remaining(self, key: str) -> float: ...

    def delete(self, *keys: str) -> None: ...

    def close(self) -> None: ...


class MemoryStore:
    """Counters in a dict (one process); expired entries are pruned as it grows."""

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._data: dict[str, tuple[int, float]] = {}

    def _prune(self, now: float) -> None:
        if len(self._data) > 10_000:
            for key in [k for k, (_, exp) in self._data.items() if exp <= now]:
                del self._data[key]

    def incr(self, key: str, window: int) -> int:
        now = self._clock()
        with self._lock:
            count, expires = self._data.get(key, (0, 0.0))
            if expires <= now:
                count, expires = 0, now + window
            self._data[key] = (count + 1, expires)
            self._prune(now)
            return count + 1

    def claim(self, key: str, ttl: int) -> bool:
        now = self._clock()
        with self._lock:
            _, expires = self._data.get(key, (0, 0.0))
            if expires > now:
                return False
            self._data[key] = (1, now + ttl)
            self._prune(now)
            return True

    def lock(self, key: str, ttl: int) -> None:
        now = self._clock()
        with self._lock:
            self._data[key] = (1, now + ttl)
            self._prune(now)

    def remaining(self, key: str) -> float:
        now = self._clock()
        with self._lock:
            _, expires = self._data.get(key, (0, 0.0))
            return max(0.0, expires - now)

    def delete(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self._data.pop(key, None)

    def close(self) -> None:
        self._data.clear()


class RedisStore:
    """``INCR`` + ``EXPIRE`` (fixed window), ``SET NX EX`` (claim), ``SET EX`` +
    ``PTTL`` (lock, remaining)."""

    def __init__(self, url: str, socket_timeout: float) -> None:
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=socket_timeout,
                                           socket_connect_timeout=socket_timeout)

    def incr(self, key: str, window: int) -> int:
        pipe = self.client.pipeline(transaction=True)
        pipe.incr(key)
        pipe.expire(key, window)  # the index is in the key: re-arming is harmless
        count, _ = pipe.execute()
        return int(count)

    def claim(self, key: str, ttl: int) -> bool:
        return bool(self.client.set(key, b"1", nx=True, ex=ttl))

    def lock(self, key: str, ttl: int) -> None:
        self.client.set(key, b"1", ex=ttl)

    def remaining(self, key: str) -> float:
        ms = int(self.client.pttl(key))
        return ms / 1000 if ms > 0 else 0.0  # -2: no key, -1: no expiry (never set so)

    def delete(self, *keys: str) -> None:
        self.client.delete(*keys)

    def close(self) -> None:
        self.client.close()


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class Throttle:
    """The demo's limits over one :class:`Store`."""

    def __init__(self, store: Store, prefix: str, clock=time.time) -> None:
        self.store = store
        self.prefix = prefix
        self._clock = clock

    def hit(self, name: str, subject: str, limit: int, window: int) -> int | None:
        """Count one attempt of ``subject`` in the current ``window``-second window;
        ``None`` while at most ``limit`` attempts were made, else the seconds until
        the window ends (for ``Retry-After``)."""
        now = self._clock()
        index = int(now // window)
        key = f"{self.prefix}{name}:{_digest(subject)}:{index}"
        try:
            count = self.store.incr(key, window)
        except Exception as exc:  # noqa: BLE001 Redis down or slow: fail open
            log.warning("throttle %s unavailable, allowing (%s: %s)", name,
                        type(exc).__name__, exc)
            return None
        if count <= limit:
            return None
        return max(1, math.ceil((index + 1) * window - now))

    def claim(self, name: str, subject: str, ttl: int) -> bool:
        """True for the first caller for ``subject`` in ``ttl`` seconds."""
        try:
            return self.store.claim(f"{self.prefix}{name}:{_digest(subject)}", ttl)
        except Exception as exc:  # noqa: BLE001 Redis down or slow: fail open
            log.warning("throttle %s unavailable, allowing (%s: %s)", name,
                        type(exc).__name__, exc)
            return True

    def wait(self, name: str, subject: str) -> int | None:
        """Seconds ``subject`` must still wait (a :meth:`fail` backoff), or None."""
        try:
            left = self.store.remaining(f"{self.prefix}{name}:wait:{_digest(subject)}")
        except Exception as exc:  # noqa: BLE001 Redis down or slow: fail open
            log.warning("throttle %s unavailable, allowing (%s: %s)", name,
                        type(exc).__name__, exc)
            return None
        return max(1, math.ceil(left)) if left > 0 else None

    def fail(self, name: str, subject: str, free: int, cap: int, memory: int = 86400) -> int:
        """Count one failure of ``subject`` (forgotten ``memory`` seconds after the
        first); past ``free`` failures each one makes ``subject`` wait 1, 2, 4, ...
        seconds, at most ``cap``.  Returns that wait (0 while free)."""
        digest = _digest(subject)
        try:
            count = self.store.incr(f"{self.prefix}{name}:fails:{digest}", memory)
            if count <= free:
                return 0
            delay = min(cap, 2 ** min(count - free - 1, 30))
            self.store.lock(f"{self.prefix}{name}:wait:{digest}", delay)
            return delay
        except Exception as exc:  # noqa: BLE001 Redis down or slow: fail open
            log.warning("throttle %s unavailable, allowing (%s: %s)", name,
                        type(exc).__name__, exc)
            return 0

    def forgive(self, name: str, subject: str) -> None:
        """Forget ``subject``'s failures (a success)."""
        digest = _digest(subject)
        try:
            self.store.delete(f"{self.prefix}{name}:fails:{digest}",
                              f"{self.prefix}{name}:wait:{digest}")
        except Exception as exc:  # noqa: BLE001 Redis down or slow: logged
            log.warning("throttle %s unavailable (%s: %s)", name, type(exc).__name__, exc)

    def close(self) -> None:
        self.store.close()


def make_throttle(settings) -> Throttle:
    url = str(settings.get("examcache.redis_url") or "").strip()
    prefix = str(settings.get("examcache.key_prefix") or "examcache:") + "demo:throttle:"
    if url.startswith(REDIS_SCHEMES):
        timeout = float(settings.get("examcache.socket_timeout") or 0.25)
        return Throttle(RedisStore(url, timeout), prefix)
    return Throttle(MemoryStore(), prefix)


def get_throttle(request_or_registry) -> Throttle:
    registry = getattr(request_or_registry, "registry", request_or_registry)
    return registry["demo.throttle"]
