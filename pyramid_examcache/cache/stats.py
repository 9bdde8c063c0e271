"""Per-process cache counters, readable from Python (``request.cache.stats()``)."""
from __future__ import annotations

import threading
from collections.abc import Callable

from ..trace import note

FIELDS = (
    "hits",           # served from the cache
    "misses",         # not in the cache (or invalid) at lookup
    "loads",          # creator calls made while holding the lease (one per cold key)
    "lock_waits",     # lookups that found another loader and waited for it
    "wait_timeouts",  # waits that gave up and loaded without storing
    "stores",         # values stored
    "stale_rejected", # fills refused because the key/tag was invalidated meanwhile
    "bypasses",       # creator calls past the cache (dirty transaction, breaker open, uncacheable)
    "errors",         # backend errors (timeouts, connection failures)
    "invalidations",  # keys + tags invalidated
    "deferred",       # invalidations kept for retry because the backend failed
    "too_large",      # values not stored: larger than examcache.max_value_bytes
    "param_bypasses", # cached-view requests with undeclared query parameters (served uncached)
    "vary_bypasses",  # cached-view requests without a stable per-user vary value (served uncached)
    "uncacheable",    # cached-view responses not stored (status, Set-Cookie, private, session,
                      # CSRF token, Vary, a callback or subscriber, decided on the final response)
    "not_modified",   # cached-view requests answered 304 Not Modified (If-None-Match)
    "early_hits",     # cached-view hits answered by the early-hit tween (also counted in hits)
    "lease_waits",    # invalidations that waited for another process's read lease to catch up
    "lease_timeouts", # ... that returned on the time limit: a reader did not acknowledge
                      # (killed without closing, partitioned, or stalled)
)


class Stats:
    """Thread-safe counters; ``snapshot()`` returns a plain dict.

    ``sink(name, n)``, when set, is told of every increment as well (the Prometheus
    counters of :mod:`pyramid_examcache.metrics`, which are multi-process correct).
    """

    __slots__ = ("_lock", "_counts", "sink")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(FIELDS, 0)
        self.sink: Callable[[str, int], None] | None = None

    def incr(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n
        note(name)  # the debug toolbar's trace of the current operation, if any
        if self.sink is not None:
            self.sink(name, n)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def reset(self) -> None:
        with self._lock:
            self._counts = dict.fromkeys(FIELDS, 0)
