"""The cache's metrics: its counters as Prometheus counters, its per-process state as gauges."""
from __future__ import annotations

import threading
import time
import weakref
from typing import Any

from prometheus_client import Counter, Gauge
from prometheus_client.core import GaugeMetricFamily

from ..cache.stats import FIELDS

COUNTERS = {name: Counter(f"examcache_cache_{name}", f"Cache {name.replace('_', ' ')} "
                          f"(request.cache.stats()['{name}'])", ["prefix"])
            for name in FIELDS}
BREAKER_OPEN = Gauge("examcache_cache_breaker_open", "1 while the cache's circuit breaker is "
                     "open (Redis presumed down, reads go to the database)", ["prefix"],
                     multiprocess_mode="livesum")
DEFERRED = Gauge("examcache_cache_deferred_invalidations", "Invalidations this process owes "
                 "the store (kept for retry after a failure)", ["prefix"],
                 multiprocess_mode="livesum")
NEAR_BYTES = Gauge("examcache_cache_near_cache_bytes", "Bytes held in the near cache",
                   ["prefix"], multiprocess_mode="livesum")
READ_LEASES = Gauge("examcache_cache_read_leases", "1 while this process holds a valid read "
                    "lease (held values served with no Redis command; summed: the processes "
                    "that do)", ["prefix"], multiprocess_mode="livesum")

#: seconds between two refreshes of the per-process gauges
REFRESH_EVERY = 1.0

_policies: weakref.WeakSet[Any] = weakref.WeakSet()
_lock = threading.Lock()
_thread: threading.Thread | None = None


def instrument(policy: Any) -> None:
    """Count ``policy``'s events in the Prometheus counters and refresh its gauges."""
    prefix = policy.settings.key_prefix
    counters = {name: counter.labels(prefix) for name, counter in COUNTERS.items()}

    def sink(name: str, n: int) -> None:
        counter = counters.get(name)
        if counter is not None:
            counter.inc(n)

    policy.stats.sink = sink
    refresh(policy)
    global _thread
    with _lock:
        _policies.add(policy)
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_refresh_forever, name="examcache-metrics",
                                       daemon=True)
            _thread.start()


def refresh(policy: Any) -> None:
    prefix = policy.settings.key_prefix
    BREAKER_OPEN.labels(prefix).set(1 if policy.breaker.state == "open" else 0)
    DEFERRED.labels(prefix).set(len(policy.deferred))
    NEAR_BYTES.labels(prefix).set(policy.backend.near_cache_bytes())
    READ_LEASES.labels(prefix).set(1 if policy.backend.read_lease_valid() else 0)


def _refresh_forever() -> None:
    while True:
        time.sleep(REFRESH_EVERY)
        for policy in list(_policies):
            try:
                refresh(policy)
            except Exception:  # noqa: BLE001 -- a closed policy: its gauges keep the last value
                pass


class DurableLogCollector:
    """``examcache_cache_durable_invalidations_pending``: logged invalidations not yet
    applied (rows still in the durable log), read from the database at scrape time."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy

    def collect(self):
        family = GaugeMetricFamily("examcache_cache_durable_invalidations_pending",
                                   "Committed invalidations still in the durable log",
                                   labels=["prefix"])
        journal = getattr(self.policy, "journal", None)
        if journal is not None:
            family.add_metric([self.policy.settings.key_prefix], journal.pending_rows())
        yield family
