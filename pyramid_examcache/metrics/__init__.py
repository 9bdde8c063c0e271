"""Prometheus metrics for the cache and the mailer (``prometheus_client``, no hand-written
exposition).

``examcache.metrics_path = /metrics`` (off by default) adds a route answering the text
exposition format; the consumer exposes its own with ``examcache-consumer --metrics-port``.
Needs the ``metrics`` extra (``pip install pyramid_examcache[metrics]``).

Multi-process correct: counters are ``prometheus_client`` counters, so under gunicorn-style
pre-fork workers set ``PROMETHEUS_MULTIPROC_DIR`` (an empty directory per deployment, as
prometheus_client's multiprocess mode asks) and every worker's counts are summed at scrape
time, whichever worker answers. Per-process gauges (breaker state, deferred invalidations,
near-cache bytes) are refreshed every second by each process and summed over live
processes. What lives in the database -- mail jobs by state, the oldest waiting job, durable
invalidations not yet applied -- is read from it at scrape time, so every process reports
the same truth.

Metric names (all prefixed ``examcache_``):

* cache (label ``prefix`` = ``examcache.key_prefix``): ``cache_<event>_total`` for every
  counter of ``request.cache.stats()`` (hits, misses, loads, lock_waits, wait_timeouts,
  bypasses, stale_rejected, errors, stores, invalidations, deferred, too_large, ...);
  ``cache_breaker_open`` (1 while open), ``cache_deferred_invalidations``,
  ``cache_near_cache_bytes``, ``cache_durable_invalidations_pending``;
* mail: ``mail_jobs{state}``, ``mail_oldest_waiting_seconds`` (web and consumer);
  ``mail_deliveries_total``, ``mail_retries_total``, ``mail_failures_total{reason}``,
  ``mail_delivery_latency_seconds`` (histogram, queued -> delivered; consumer).
"""
from __future__ import annotations

from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationError

from ..settings import cache_setting, parse_metrics_settings

__all__ = ["includeme"]

#: the setting of the metrics route (parsed by pyramid_examcache.settings)
PATH_SETTING = cache_setting("examcache.metrics_path")


def includeme(config: Configurator) -> None:
    """Expose ``examcache.metrics_path`` (when set) and feed the cache's counters."""
    path = parse_metrics_settings(config.get_settings()).path
    if path is None:
        return
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ConfigurationError("examcache.metrics_path is set but prometheus_client is not "
                                 "installed: pip install pyramid_examcache[metrics]") from None
    from .views import add_metrics_view

    add_metrics_view(config, path)
