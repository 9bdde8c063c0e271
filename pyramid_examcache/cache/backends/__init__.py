"""Cache backends behind the narrow interface of :mod:`.base`."""
from __future__ import annotations

import logging

from ...settings import CacheSettings
from ...topology import parse
from .base import Backend, Lookup, Status
from .memory import MemoryBackend

log = logging.getLogger(__name__)


def make_backend(settings: CacheSettings) -> Backend:
    """Build the backend named by ``examcache.redis_url`` (settings already validated,
    ``examcache.near_cache`` resolved for the topology: near_cache_mb is 0 when off)."""
    kind = parse(settings.redis_url).kind
    if kind == "memory":
        return MemoryBackend()
    if kind == "cluster":
        from .cluster import ClusterBackend

        return ClusterBackend(settings.redis_url, prefix=settings.key_prefix,
                              socket_timeout=settings.socket_timeout,
                              near_cache_bytes=int(settings.near_cache_mb * 1024 * 1024),
                              tracking=settings.near_cache == "barrier")
    from .redis import RedisBackend

    return RedisBackend(settings.redis_url, prefix=settings.key_prefix,
                        socket_timeout=settings.socket_timeout,
                        near_cache_bytes=int(settings.near_cache_mb * 1024 * 1024),
                        tracking=settings.near_cache in ("barrier", "lease"),
                        lease_ms=settings.lease_ms)


__all__ = ["Backend", "Lookup", "Status", "MemoryBackend", "make_backend"]
