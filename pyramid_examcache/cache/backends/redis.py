"""``redis://`` / ``rediss://`` / ``unix://``: the Redis backend (``redis+sentinel://``: its
subclass in :mod:`.sentinel`; Redis Cluster: :mod:`.cluster`).

Layout under the key prefix ``P``:

* ``P v:<key>`` -- a hash ``{d: value bytes, t: tags, g: tag versions, s: stamp}`` with
  the TTL (the stamp is the token of the fill that stored it, never reused);
* ``P l:<key>`` -- the lease: the holder's random token (``""`` = "bypass"), PX lease_ttl;
* ``P t:<tag>`` -- the tag's current version, a random string.  A lookup that
  creates it gives it the lease's TTL (``lock_timeout``); a fill lengthens it to
  outlive the value it stores (never shortened), so a miss that stores nothing
  leaves no key behind once its lease is gone, and a version that expires or is
  lost invalidates, like a deleted one (policy docstring, G2b).

Each operation of :class:`~.base.Backend` is one Lua script (one round trip,
atomic), except the hit path of ``lookup`` and ``get``: a pipelined ``HMGET`` of
the value and a ``GET`` of each of the caller's tag versions, no Lua -- why that
read needs no atomicity is in ``docs/design/topologies.md``.

The backend has three parts, each in its own place: this module (the commands and
the lease scripts), the RESP client with one socket per thread (:mod:`.resp`), and
the near cache, one variant chosen when the backend is built (:func:`near_cache_mode`,
:class:`~.near.NearCache`): ``off``, ``check`` (:mod:`.near`), ``barrier`` (tracking,
:mod:`.tracked_near`) or ``lease`` (read leases, :mod:`.read_lease`).  With read
leases on, :meth:`RedisBackend.invalidate` (and ``clear``) return only once every
process holding a lease has applied the change, or that lease has run out; every
single-Redis backend runs that writer side when leases are on, with or without
tracking of its own.

Connections come from one pool per application with short socket/connect
timeouts and **no** client-side retries: a slow Redis must cost one timeout,
not three (the policy's circuit breaker handles the rest).
"""
from __future__ import annotations

import os
import time

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ...topology import parse as parse_url
from .base import BYPASS_MS, SEP, Backend, Lookup, Status
from .near import CheckedNearCache, NearCache
from .read_lease import LeaseWriter
from .resp import ThreadConnection, ThreadConnections, pack
from .tracked_near import BarrierNearCache, LeasedNearCache

_SPLIT = r"""
local function split(s)
  local out = {}
  if s == nil or s == false or s == '' then return out end
  for part in string.gmatch(s, '([^\31]+)') do out[#out + 1] = part end
  return out
end
"""

#: KEYS[2] is the lease, ARGV[1] the token, ARGV[2] its ms: a bypass marker or another
#: holder answers 4 / 3; else the lease is taken (shared by LOOKUP and the cluster's LEASE)
TAKE_LEASE = r"""
local holder = redis.call('GET', KEYS[2])
if holder then
  if holder == '' then return {4, false} end
  return {3, false}
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
"""

#: how much longer than the value a tag version is kept by the fill that stores under it
#: (the version must outlive every value stored under it; the margin also spares a re-extension,
#: and its tracking message, on every fill under a hot tag)
OUTLIVE_MS = 1000

# KEYS: value, lease. ARGV: token, lease_ms, tag_prefix, ttl (unused), version_seed, tags...
# (the slow path: a valid hit here is rare, the pipelined read answers most). A version the
# lookup creates lives only as long as the lease (a miss whose response is not stored leaves
# nothing behind); one it finds is kept at least that long (only ever lengthened)
LOOKUP = _SPLIT + r"""
local r = redis.call('HMGET', KEYS[1], 'd', 't', 'g')
if r[1] then
  local ok = true
  if r[2] and r[2] ~= '' then
    local tags, vers = split(r[2]), split(r[3])
    for i = 1, #tags do
      if redis.call('GET', ARGV[3] .. tags[i]) ~= vers[i] then ok = false; break end
    end
  end
  if ok then return {1, r[1]} end
  redis.call('DEL', KEYS[1])
end
""" + TAKE_LEASE + r"""
local versions = {}
local lease_ms = tonumber(ARGV[2])
for i = 6, #ARGV do
  local tk = ARGV[3] .. ARGV[i]
  local v = redis.call('GET', tk)
  if not v then
    v = ARGV[5] .. '.' .. i
    redis.call('SET', tk, v, 'PX', lease_ms)
  else
    local left = redis.call('PTTL', tk)
    if left >= 0 and left < lease_ms then redis.call('PEXPIRE', tk, lease_ms) end
  end
  versions[#versions + 1] = v
end
return {2, table.concat(versions, '\31')}
"""

# KEYS: value, lease. ARGV: token, value, ttl, tag_prefix, tags, versions. A missing or changed
# version refuses the fill; a stored value's versions are lengthened to outlive it
FILL = _SPLIT + r"""
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
local ttl = tonumber(ARGV[3])
local tags, vers = split(ARGV[5]), split(ARGV[6])
for i = 1, #tags do
  local tk = ARGV[4] .. tags[i]
  if redis.call('GET', tk) ~= vers[i] then return 0 end
end
for i = 1, #tags do
  local tk = ARGV[4] .. tags[i]
  local left = redis.call('PTTL', tk)
  if left >= 0 and left < ttl * 1000 then redis.call('PEXPIRE', tk, ttl * 1000 + OUTLIVE_MS) end
end
redis.call('HSET', KEYS[1], 'd', ARGV[2], 't', ARGV[5], 'g', ARGV[6], 's', ARGV[1])
redis.call('EXPIRE', KEYS[1], ttl)
return 1
""".replace("OUTLIVE_MS", str(OUTLIVE_MS))

# KEYS: lease. ARGV: token, bypass_ms
RELEASE = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], '', 'PX', ARGV[2])
  return 1
end
return 0
"""

# KEYS: value. ARGV: tag_prefix
GET = _SPLIT + r"""
local r = redis.call('HMGET', KEYS[1], 'd', 't', 'g')
if not r[1] then return false end
local tags, vers = split(r[2]), split(r[3])
for i = 1, #tags do
  if redis.call('GET', ARGV[1] .. tags[i]) ~= vers[i] then return false end
end
return r[1]
"""


#: the client's options: short timeouts, no retries, health checks
def client_options(socket_timeout: float, max_connections: int = 64) -> dict:
    return dict(socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout,
                retry=Retry(NoBackoff(), 0), max_connections=max_connections,
                health_check_interval=30)


def make_client(url: str, socket_timeout: float, max_connections: int = 64) -> redis.Redis:
    """A client on its own pool: short timeouts, no retries, health checks."""
    pool = redis.ConnectionPool.from_url(url, **client_options(socket_timeout, max_connections))
    return redis.Redis(connection_pool=pool)


def _value_and_tags(p: str, key: str, tags) -> tuple[bytes, bytes]:
    """The value's key name and the packed ``GET`` of each tag version (the hit path's read)."""
    tag_prefix = f"{p}t:".encode()
    return (f"{p}v:{key}".encode(),
            b"".join(pack(b"GET", tag_prefix + tag.encode()) for tag in tags))


def _valid(tags, stored_tags, stored_versions, current) -> bool:
    """Were the value's tags (as stored) ``tags``, with the versions just read?"""
    return stored_tags == SEP.join(tags).encode() and (
        not tags or stored_versions == SEP.encode().join(
            v if v is not None else b"\x00" for v in current))


def glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis glob pattern (SCAN MATCH, KEYS)."""
    return "".join("\\" + c if c in "*?[]\\^-" else c for c in text)


def near_cache_mode(near_cache_bytes: int, tracking: bool, lease_ms: int,
                    single: bool = True) -> str:
    """``off``, ``check``, ``barrier`` or ``lease``: the near cache a backend built with
    these arguments has (read leases need a single Redis; tracking works on every Redis
    topology, fenced on Sentinel and Cluster by :mod:`.fenced_near`)."""
    if near_cache_bytes <= 0:
        return "off"
    if not tracking:
        return "check"
    return "lease" if lease_ms > 0 and single else "barrier"


class RedisBackend(Backend):
    errors = (redis.RedisError, OSError)
    #: read leases apply (a single Redis: not Sentinel, not Cluster)
    single = True
    #: the ``barrier`` near cache (Sentinel: :class:`~.fenced_near.SentinelNearCache`)
    barrier_class: type[BarrierNearCache] = BarrierNearCache

    def __new__(cls, url: str, *args, **kwargs):
        """``RedisBackend(url)`` builds the Sentinel backend for a ``redis+sentinel://`` URL."""
        if cls is RedisBackend and parse_url(url).kind == "sentinel":
            from .sentinel import SentinelBackend

            cls = SentinelBackend
        return super().__new__(cls)

    def __init__(self, url: str, prefix: str = "examcache:", socket_timeout: float = 0.25,
                 client: redis.Redis | None = None, near_cache_bytes: int = 0,
                 tracking: bool = False, lease_ms: int = 0) -> None:
        self.client = client or self._create_client(url, socket_timeout)
        self.prefix = prefix
        self._lookup = self.client.register_script(LOOKUP)
        self._fill = self.client.register_script(FILL)
        self._release = self.client.register_script(RELEASE)
        self._get = self.client.register_script(GET)
        self._conns = ThreadConnections(self.client.connection_pool)
        self._near = self._create_near_cache(near_cache_bytes, tracking,
                                             lease_ms if self.single else 0, socket_timeout)
        # the hit path without I/O: the near cache's own method, no layer in between
        self.peek_local = self._near.peek_local  # type: ignore[method-assign]

    def _create_client(self, url: str, socket_timeout: float) -> redis.Redis:
        return make_client(url, socket_timeout)

    def _create_near_cache(self, max_bytes: int, tracking: bool, lease_ms: int,
                           barrier_timeout: float) -> NearCache:
        """The near cache variant (chosen once), with the lease writer when leases are on."""
        mode = near_cache_mode(max_bytes, tracking, lease_ms, self.single)
        if mode in ("barrier", "lease"):
            cls = LeasedNearCache if mode == "lease" else self.barrier_class
            return cls(self.client, self.prefix, max_bytes, barrier_timeout,
                       self._fetch_expiring, lease_ms)
        # a process without tracking may still write while others hold read leases
        writer = LeaseWriter(self.client, self.prefix, lease_ms) if lease_ms > 0 else None
        if mode == "check":
            return CheckedNearCache(max_bytes, self._fetch, self._fetch_stamp, writer)
        return NearCache(self._fetch, writer)

    # -- what tests and operators look at ------------------------------------------------
    @property
    def near_mode(self) -> str:
        return self._near.mode

    def answers_locally(self) -> bool:
        """Read leases are on (one Redis, near cache ``lease``): :meth:`peek_local`
        may answer."""
        return self._lease is not None

    def answers_after_barrier(self) -> bool:
        """The ``barrier`` near cache (one Redis, Sentinel): :meth:`peek_after_barrier` may
        answer."""
        return self._near.mode == "barrier"

    def peek_after_barrier(self, key, tags=()):
        """The held value after the barrier :meth:`get` would wait for (on Sentinel: in the
        epoch of this thread's connection, as :meth:`get`); never the validating read."""
        return self._near.held(key, tags, self._prepare())

    @property
    def _tracked(self):
        return getattr(self._near, "tracked", None)

    @property
    def _stream(self):
        return getattr(self._near, "stream", None)

    @property
    def _lease(self):
        return getattr(self._near, "lease", None)

    @property
    def _writer(self) -> LeaseWriter | None:
        return self._near.writer

    def read_lease_valid(self) -> bool:
        return self._near.lease_held()

    def attach_stats(self, incr) -> None:
        self._near.attach_stats(incr)

    def near_cache_bytes(self) -> int:
        return self._near.nbytes

    # -- the reads ---------------------------------------------------------------------------
    def _fetch(self, key: str, tags, conn) -> tuple[bytes | None, bytes | None]:
        """``(data, stamp)`` of ``key``'s value if it is valid and was stored under exactly
        ``tags`` (one pipelined round trip, no Lua); else ``(None, None)``."""
        holder, p = conn
        value_key, tag_gets = _value_and_tags(p, key, tags)
        replies = self._roundtrip(holder, pack(b"HMGET", value_key, b"d", b"s", b"t", b"g")
                                  + tag_gets, 1 + len(tags))
        data, stamp, stored_tags, stored_versions = replies[0]
        if data is not None and _valid(tags, stored_tags, stored_versions, replies[1:]):
            return data, stamp
        return None, None

    def _fetch_stamp(self, key: str, tags, conn) -> bytes | None:
        """The stamp of ``key``'s value if it is valid under exactly ``tags`` (the same
        round trip without the value's bytes); else None."""
        holder, p = conn
        value_key, tag_gets = _value_and_tags(p, key, tags)
        replies = self._roundtrip(holder, pack(b"HMGET", value_key, b"s", b"t", b"g")
                                  + tag_gets, 1 + len(tags))
        stamp, stored_tags, stored_versions = replies[0]
        if stamp is not None and _valid(tags, stored_tags, stored_versions, replies[1:]):
            return stamp
        return None

    def _fetch_expiring(self, key: str, tags, conn) -> tuple:
        """:meth:`_fetch` and the value's remaining TTL: ``(data, stamp, pttl)``."""
        holder, p = conn
        value_key, tag_gets = _value_and_tags(p, key, tags)
        replies = self._roundtrip(holder, pack(b"HMGET", value_key, b"d", b"s", b"t", b"g")
                                  + pack(b"PTTL", value_key) + tag_gets, 2 + len(tags))
        data, stamp, stored_tags, stored_versions = replies[0]
        if data is not None and _valid(tags, stored_tags, stored_versions, replies[2:]):
            return data, stamp, replies[1]
        return None, stamp, replies[1]

    def lookup(self, key, token, lease_ttl, ttl, tags=()):
        conn = self._prepare()
        data = self._near.get(key, tags, conn)
        if data is not None:
            return Lookup(Status.HIT, data)
        # a miss (or anything unusual): the atomic script decides and leases
        holder, p = conn
        status, payload = self._eval(
            holder, LOOKUP, self._lookup.sha, (f"{p}v:{key}", f"{p}l:{key}"),
            (token, max(1, int(lease_ttl * 1000)), f"{p}t:", int(ttl),
             os.urandom(16).hex(), *tags))
        if status == 1:
            return Lookup(Status.HIT, payload)
        if status == 2:
            versions = tuple(payload.decode().split(SEP)) if payload else ()
            return Lookup(Status.LEASED, None, versions)
        return Lookup(Status(status))

    def get(self, key, tags=()):
        conn = self._prepare()
        data = self._near.get(key, tags, conn)
        if data is not None:
            return data
        holder, p = conn
        return self._eval(holder, GET, self._get.sha, (f"{p}v:{key}",), (f"{p}t:",))

    # -- the writes --------------------------------------------------------------------------
    def fill(self, key, token, value, ttl, tags=(), versions=()):
        holder, p = self._prepare()
        stored = bool(self._eval(
            holder, FILL, self._fill.sha, (f"{p}v:{key}", f"{p}l:{key}"),
            (token, value, int(ttl), f"{p}t:", SEP.join(tags), SEP.join(versions))))
        if stored:
            self._near.put(key, token, value)
        return stored

    def release(self, key, token):
        holder, p = self._prepare()
        self._eval(holder, RELEASE, self._release.sha, (f"{p}l:{key}",), (token, BYPASS_MS))

    def invalidate(self, keys=(), tags=()):
        keys, tags = list(keys), list(tags)
        self._near.drop(keys, tags)
        if not keys and not tags:
            return
        self._delete(keys, tags)
        writer = self._near.writer
        if writer is not None:  # returns once no read lease can serve the old values
            writer.wait()

    def _delete(self, keys: list[str], tags: list[str]) -> None:
        """``DEL`` the values, leases and tag versions, retried on a fresh connection when
        the connection fails: once at once (Redis, a proxy or a NAT closed an idle pooled
        connection: not a fault), and with read leases on, again and again until the
        lease limit has passed since the first try -- a stall shorter than that (a
        ``DEBUG SLEEP``, a ``CLIENT PAUSE WRITE``) is waited out, so G2 holds through it.
        A connection that cannot be made at all (Redis down: every reader's stream is
        down too, their leases revoked) is not retried.  The last error is raised (the
        policy defers the invalidation: G4, G6)."""
        writer = self._near.writer
        limit = writer.limit if writer is not None else 0.0
        started = time.monotonic()
        delay, attempt = 0.01, 0
        while True:
            try:
                holder, p = self._prepare()
                if attempt:  # a fresh connection; refused -> Redis is down, give up
                    holder.conn.connect()
                names = [name for key in keys for name in (f"{p}v:{key}", f"{p}l:{key}")]
                names += [f"{p}t:{tag}" for tag in tags]
                self._roundtrip(holder, pack(b"DEL", *names), 1)
                return
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                attempt += 1
                if attempt > 1 and (time.monotonic() - started + delay >= limit
                                    or not self._connectable()):
                    raise
                if attempt > 1:
                    time.sleep(delay)
                    delay = min(delay * 2, 0.1)

    def _connectable(self) -> bool:
        """Can a connection to Redis be made now (a stall, not an outage)?"""
        conn = self._conns.get().conn
        try:
            conn.connect()
            return True
        except redis.TimeoutError:  # accepted but not answered: stalled, not gone
            return True
        except (redis.ConnectionError, OSError):
            return False

    def clear(self):
        self._near.clear()
        batch = []
        leases = f"{self.prefix}x:".encode()  # the read-lease registry is not cache data
        for name in self.client.scan_iter(match=glob_escape(self.prefix) + "*", count=1000):
            if name.startswith(leases):
                continue
            batch.append(name)
            if len(batch) >= 500:
                self.client.delete(*batch)
                batch.clear()
        if batch:
            self.client.delete(*batch)
        writer = self._near.writer
        if writer is not None:
            writer.wait()

    # -- the connection ----------------------------------------------------------------------
    def _prepare(self) -> tuple[ThreadConnection, str]:
        """This thread's connection and the key prefix to use on it."""
        return self._conns.get(), self.prefix

    def _roundtrip(self, holder: ThreadConnection, packed: bytes, replies: int) -> list:
        """Send pipelined commands, read ``replies`` replies (errors are raised)."""
        conn = holder.conn
        try:
            conn.send_packed_command([packed])  # connects first if need be
            return [conn.read_response() for _ in range(replies)]
        except BaseException:
            conn.disconnect()  # replies may be left unread: never reuse it as is
            raise

    def _eval(self, holder, script: str, sha: str, keys: tuple, args: tuple):
        epoch = holder.epoch
        try:
            return self._roundtrip(holder, pack(b"EVALSHA", sha, len(keys), *keys, *args), 1)[0]
        except redis.exceptions.NoScriptError:  # Redis restarted or SCRIPT FLUSH
            holder = self._reconnected(epoch)
            return self._roundtrip(holder, pack(b"EVAL", script, len(keys), *keys, *args), 1)[0]

    def _reconnected(self, epoch: str | None) -> ThreadConnection:
        """This thread's connection again, to resend a call whose keys were built in
        ``epoch``'s key space (one key space on a single Redis)."""
        return self._prepare()[0]

    def ping(self):
        self.client.ping()

    def close(self):
        self._near.close()
        self._conns.close()
        self.client.close()
        self.client.connection_pool.disconnect()
