"""``redis+sentinel://``: the Redis backend on a Sentinel-managed primary.

The same commands and scripts as :mod:`.redis`; this subclass changes only how a
connection is made and fenced (:mod:`.failover`, why: ``docs/design/topologies.md``):

* the client's pool is on the service's primary, found through the sentinels;
* every key carries the primary's *epoch* (its replication ID, read when a
  connection is (re)established), so no value that predates a failover is served;
* every batch ends with ``ROLE``: its replies count only if the node was still the
  primary after running them;
* a ``+switch-master`` from the sentinels makes every thread reconnect before its
  next call (:class:`~.failover.SwitchWatch`).

The ``barrier`` near cache (the default) is fenced by the epoch too
(:class:`~.fenced_near.SentinelNearCache`): a failover flushes it before the new epoch
serves a hit.  Read leases need a single Redis: ``lease`` is refused here.
"""
from __future__ import annotations

import redis

from ...topology import parse as parse_url
from ...topology import primary_pool, sentinel_manager
from . import failover
from .fenced_near import SentinelNearCache
from .redis import RedisBackend, client_options
from .resp import ThreadConnection


class SentinelBackend(RedisBackend):
    single = False
    barrier_class = SentinelNearCache

    def __init__(self, url: str, prefix: str = "examcache:", socket_timeout: float = 0.25,
                 client: redis.Redis | None = None, near_cache_bytes: int = 0,
                 tracking: bool = False, lease_ms: int = 0) -> None:
        super().__init__(url, prefix=prefix, socket_timeout=socket_timeout, client=client,
                         near_cache_bytes=near_cache_bytes, tracking=tracking,
                         lease_ms=lease_ms)
        self._generation = 0  # bumped by +switch-master: every thread reconnects
        topo = parse_url(url)
        self._watch = failover.SwitchWatch(sentinel_manager(topo, max(socket_timeout, 0.5)),
                                           topo.service, self._switched)

    def _create_client(self, url: str, socket_timeout: float) -> redis.Redis:
        """A client on a pool on the service's primary (short timeouts, no retries)."""
        return redis.Redis(connection_pool=primary_pool(parse_url(url),
                                                        **client_options(socket_timeout)))

    def _switched(self) -> None:
        """A sentinel announced a failover: every thread reconnects before its next call,
        and the near cache forgets everything and reconnects its stream."""
        self._generation += 1
        failed_over = getattr(self._near, "failover", None)
        if failed_over is not None:
            failed_over()

    def _prepare(self) -> tuple[ThreadConnection, str]:
        """This thread's connection, connected to the current primary, and the key prefix
        with that primary's epoch."""
        holder = self._conns.get()
        if holder.epoch is None or holder.generation != self._generation:
            if holder.generation != self._generation:
                holder.conn.disconnect()
                holder.generation = self._generation
            holder.epoch = None
            try:
                holder.epoch = failover.primary_epoch(holder.conn)  # (re)connects via sentinels
            except BaseException:
                holder.conn.disconnect()
                raise
        return holder, f"{self.prefix}{holder.epoch}:"

    def _roundtrip(self, holder: ThreadConnection, packed: bytes, replies: int) -> list:
        """The batch ends with ``ROLE``: its replies count only if the node was still the
        primary after running them."""
        try:
            out = super()._roundtrip(holder, packed + failover.ROLE, replies + 1)
            failover.check_role(out.pop())
            return out
        except BaseException:
            holder.conn.disconnect()  # (done already unless the node was demoted)
            holder.epoch = None
            raise

    def _reconnected(self, epoch: str | None) -> ThreadConnection:
        holder, _ = self._prepare()
        if holder.epoch != epoch:  # the keys were built for another primary
            raise failover.NotPrimary("the primary changed during the call") from None
        return holder

    def close(self):
        self._watch.close()
        super().close()
