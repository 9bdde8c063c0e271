"""``redis+cluster://``: the lease protocol on a Redis Cluster.

Layout under the key prefix ``P`` (which may not contain braces)::

    P v:{<key>}   the value hash {d, t, g, s}, as in :mod:`.redis`
    P l:{<key>}   the lease
    P t:<tag>     a tag's version

A value and its lease share a hash tag (``{<key>}``), so they live in one slot and
the two scripts below touch only those two keys, both declared in ``KEYS``.  Tag
versions hash anywhere: they are read and written with plain commands, never
inside a script.  The protocol stays correct because its proof never needed the
tag checks to be atomic with the lease: G2, re-proved for this layout (keys, tags,
fills, lost metadata, G3), is in ``docs/design/topologies.md``.

``MOVED``/``ASK``/``TRYAGAIN`` during a resharding are followed by redis-py's
:class:`~redis.cluster.RedisCluster` (for scripts too).  ``clear`` scans every
primary.  The ``check`` near cache needs no per-node bookkeeping: each near hit is
validated by the value's stamp and tag versions read from whichever node owns them
*now*.  The ``barrier`` near cache (the default) keeps one tracking stream per primary
(:class:`~.fenced_near.ClusterNearCache`; the proof is in ``docs/design/topologies.md``).
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from ...topology import cluster_client
from ...topology import parse as parse_url
from .base import BYPASS_MS, SEP, Backend, Lookup, Status
from .fenced_near import ClusterNearCache
from .near import ByteLRU
from .redis import OUTLIVE_MS, RELEASE, TAKE_LEASE, glob_escape

# KEYS: value, lease.  ARGV: token, lease_ms, tags, versions (read just before)
LEASE = r"""
local r = redis.call('HMGET', KEYS[1], 'd', 't', 'g')
if r[1] then
  if (r[2] or '') == ARGV[3] and (r[3] or '') == ARGV[4] then return {1, r[1]} end
  redis.call('DEL', KEYS[1])
end
""" + TAKE_LEASE + """
return {2, false}
"""

# KEYS: value, lease.  ARGV: token, value, ttl, tags, versions, store ('1') or only drop the lease
FILL = r"""
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
if ARGV[6] ~= '1' then return 0 end
redis.call('HSET', KEYS[1], 'd', ARGV[2], 't', ARGV[4], 'g', ARGV[5], 's', ARGV[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
"""


def make_cluster(url: str, socket_timeout: float, max_connections: int = 64):
    """A :class:`~redis.cluster.RedisCluster`: short timeouts, no retries (fail open)."""
    return cluster_client(parse_url(url), socket_timeout=socket_timeout,
                          socket_connect_timeout=socket_timeout, retry=Retry(NoBackoff(), 0),
                          max_connections=max_connections)


class ClusterBackend(Backend):
    #: (redis-py's RedisClusterException, e.g. "cannot be connected", is no RedisError)
    errors = (redis.RedisError, OSError, RedisClusterException)

    def __init__(self, url: str, prefix: str = "examcache:", socket_timeout: float = 0.25,
                 client=None, near_cache_bytes: int = 0, tracking: bool = False) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError(f"a cluster key prefix may not contain braces: {prefix!r}")
        self.client = client or make_cluster(url, socket_timeout)
        self.prefix = prefix
        self._lease = self.client.register_script(LEASE)
        self._fill = self.client.register_script(FILL)
        self._release = self.client.register_script(RELEASE)
        #: ``barrier``: the tracked near cache (one stream per primary); else ``check``'s LRU
        self._tracked_near = (ClusterNearCache(self.client, prefix, near_cache_bytes,
                                               socket_timeout, self._fetch_expiring)
                              if near_cache_bytes > 0 and tracking else None)
        self._near = (ByteLRU(near_cache_bytes)
                      if near_cache_bytes > 0 and self._tracked_near is None else None)

    @property
    def near_mode(self) -> str:
        if self._tracked_near is not None:
            return "barrier"
        return "check" if self._near is not None else "off"

    def answers_after_barrier(self) -> bool:
        return self._tracked_near is not None

    def peek_after_barrier(self, key, tags=()):
        """The held value after a :class:`~.fenced_near.JointBarrier` round (every primary's
        ``PING`` and probe), as :meth:`get` waits for it; never the validating read."""
        tracked = self._tracked_near
        return tracked.held(key, tags, None) if tracked is not None else None

    def near_cache_bytes(self) -> int:
        near = self._tracked_near or self._near
        return near.nbytes if near is not None else 0

    def _fetch_expiring(self, key: str, tags: Sequence[str], conn=None) -> tuple:
        """``(data, stamp, pttl)`` of ``key``'s value, ``data`` None unless it is valid and
        was stored under exactly ``tags`` (one pipeline, to as many nodes as needed)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hmget(self._v(key), "d", "s", "t", "g")
        pipe.pttl(self._v(key))
        for tag in tags:
            pipe.get(self._t(tag))
        replies = pipe.execute()
        (data, stamp, stored_tags, stored_versions), pttl = replies[0], replies[1]
        expected = SEP.encode().join(v if v is not None else b"\x00" for v in replies[2:])
        if (data is None or (stored_tags or b"") != SEP.join(tags).encode()
                or (tags and (stored_versions or b"") != expected)):
            return None, stamp, pttl
        return data, stamp, pttl

    def _v(self, key: str) -> str:
        return f"{self.prefix}v:{{{key}}}"

    def _l(self, key: str) -> str:
        return f"{self.prefix}l:{{{key}}}"

    def _t(self, tag: str) -> str:
        return f"{self.prefix}t:{tag}"

    def _versions(self, tags: Sequence[str]) -> list:
        if not tags:
            return []
        pipe = self.client.pipeline(transaction=False)
        for tag in tags:
            pipe.get(self._t(tag))
        return pipe.execute()

    def _forget(self, key: str) -> None:
        if self._near is not None:
            self._near.discard(key)

    def _read(self, key: str, tags: Sequence[str]) -> bytes | None:
        """A valid value of ``key`` or None: the value and the versions of the
        caller's tags in one pipeline (to as many nodes as they live on); when
        the value was stored under other tags, their versions in a second one."""
        near = self._near.get(key) if self._near is not None else None
        fields = ("s", "t", "g") if near is not None else ("d", "s", "t", "g")
        pipe = self.client.pipeline(transaction=False)
        pipe.hmget(self._v(key), *fields)
        for tag in tags:
            pipe.get(self._t(tag))
        replies = pipe.execute()
        if near is not None:
            (stamp, stored_tags, stored_versions), data = replies[0], near[1]
        else:
            data, stamp, stored_tags, stored_versions = replies[0]
        if stamp is None or (near is not None and stamp != near[0]):
            if near is not None:
                self._forget(key)
                return self._read(key, tags) if stamp is not None else None
            return None
        stored = stored_tags.decode().split(SEP) if stored_tags else []
        current = replies[1:] if stored == list(tags) else self._versions(stored)
        expected = SEP.encode().join(v if v is not None else b"\x00" for v in current)
        if (stored_versions or b"") != expected:
            if near is not None:
                self._forget(key)
            return None
        if self._near is not None and near is None:
            self._near.put(key, stamp, data)
        return data

    def _valid_value(self, key: str, tags: Sequence[str]) -> bytes | None:
        if self._tracked_near is not None:
            return self._tracked_near.get(key, tags, None)
        return self._read(key, tags)

    def lookup(self, key, token, lease_ttl, ttl, tags=()):
        data = self._valid_value(key, tags)
        if data is not None:
            return Lookup(Status.HIT, data)
        # current versions, creating a fresh one for a tag that has none (SET NX GET: one
        # atomic command per tag key, on its own node), for the lease's lifetime only; one
        # found is kept at least that long (PEXPIRE GT only ever lengthens)
        seed = os.urandom(16).hex()
        lease_ms = max(1, int(lease_ttl * 1000))
        versions: list[str] = []
        if tags:
            pipe = self.client.pipeline(transaction=False)
            for i, tag in enumerate(tags):
                pipe.set(self._t(tag), f"{seed}.{i}", px=lease_ms, nx=True, get=True)
                pipe.execute_command("PEXPIRE", self._t(tag), lease_ms, "GT")
            for i, old in enumerate(pipe.execute()[::2]):
                versions.append(old.decode() if old is not None else f"{seed}.{i}")
        status, payload = self._lease(
            keys=[self._v(key), self._l(key)],
            args=[token, lease_ms, SEP.join(tags), SEP.join(versions)])
        if status == 1:
            return Lookup(Status.HIT, payload)
        if status == 2:
            return Lookup(Status.LEASED, None, tuple(versions))
        return Lookup(Status(status))

    def fill(self, key, token, value, ttl, tags=(), versions=()):
        ok = True
        if tags:
            pipe = self.client.pipeline(transaction=False)
            for tag in tags:  # a stored value's versions outlive it (never created here)
                pipe.execute_command("PEXPIRE", self._t(tag), int(ttl) * 1000 + OUTLIVE_MS, "GT")
                pipe.get(self._t(tag))
            replies = pipe.execute()
            current = [v.decode() if v is not None else None for v in replies[1::2]]
            ok = current == list(versions)
        stored = bool(self._fill(
            keys=[self._v(key), self._l(key)],
            args=[token, value if ok else b"", int(ttl), SEP.join(tags), SEP.join(versions),
                  "1" if ok else "0"]))
        if stored and self._near is not None:
            self._near.put(key, token.encode(), bytes(value))
        return stored

    def release(self, key, token):
        self._release(keys=[self._l(key)], args=[token, BYPASS_MS])

    def invalidate(self, keys=(), tags=()):
        keys, tags = list(keys), list(tags)
        if self._tracked_near is not None:
            self._tracked_near.drop(keys, tags)
        if self._near is not None:
            for key in keys:
                self._near.discard(key)
        if not keys and not tags:
            return
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.execute_command("DEL", self._v(key), self._l(key))  # one slot: atomic
        for tag in tags:
            pipe.delete(self._t(tag))
        pipe.execute()

    def get(self, key, tags=()):
        return self._valid_value(key, tags)

    def clear(self):
        if self._tracked_near is not None:
            self._tracked_near.clear()
        if self._near is not None:
            self._near.clear()
        match = glob_escape(self.prefix) + "*"
        for node in self.client.get_primaries():
            conn = self.client.get_redis_connection(node)
            batch = []
            for name in conn.scan_iter(match=match, count=1000):
                batch.append(name)
                if len(batch) >= 500:
                    self._unlink(conn, batch)
            self._unlink(conn, batch)

    @staticmethod
    def _unlink(conn, names: list) -> None:
        if names:
            pipe = conn.pipeline(transaction=False)
            for name in names:  # one key per command: they are in different slots
                pipe.delete(name)
            pipe.execute()
            names.clear()

    def ping(self):
        self.client.ping()

    def close(self):
        if self._tracked_near is not None:
            self._tracked_near.close()
        self.client.close()
