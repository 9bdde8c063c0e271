"""Cache backends behind the narrow interface of :mod:`.base`."""
from __future__ import annotations

import logging

from ...settings import CacheSettings
from .base import Backend, Lookup, Status
from .memory import MemoryBackend

log = logging.getLogger(__name__)


def make_backend(settings: CacheSettings) -> Backend:
    """Build the backend named by ``examcache.redis_url`` (settings already validated)."""
    if (settings.tracking and not settings.redis_url.startswith("memory://")
            and (settings.near_cache_mb <= 0 or "+" in settings.redis_url)):
        log.info("examcache.tracking does not apply here (it needs a single Redis, not "
                 "Sentinel or Cluster, and examcache.near_cache_mb > 0): every hit is validated "
                 "against Redis instead")
    if settings.redis_url.startswith("memory://"):
        return MemoryBackend()
    if "+cluster://" in settings.redis_url:
        from .cluster import ClusterBackend

        return ClusterBackend(settings.redis_url, prefix=settings.key_prefix,
                              socket_timeout=settings.socket_timeout,
                              near_cache_bytes=int(settings.near_cache_mb * 1024 * 1024))
    from .redis import RedisBackend

    return RedisBackend(settings.redis_url, prefix=settings.key_prefix,
                        socket_timeout=settings.socket_timeout,
                        near_cache_bytes=int(settings.near_cache_mb * 1024 * 1024),
                        tracking=settings.tracking, lease_ms=settings.tracking_lease_ms)


__all__ = ["Backend", "Lookup", "Status", "MemoryBackend", "make_backend"]
