"""``redis://`` / ``rediss://`` / ``unix://`` / ``redis+sentinel://``: the Redis backend.

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
atomic), with one exception, the hit path of ``lookup``: it first sends
``HMGET v d t g`` and a ``GET`` of each of the caller's tag versions, pipelined
(one round trip, no Lua, the bytes returned natively).  That read is not atomic
and need not be: the value is read *before* the tag versions, and a version is
a random string never reused, so a version still equal to the one stored with
the value proves no invalidation of that tag happened between the store and
the read -- the value was valid when it was read.  Anything else (a miss, a
mismatch, different tags) goes through the atomic ``LOOKUP`` script, which
deletes invalid values and grants leases.  Every key a script touches lives
under one prefix on one Redis; this backend is for a single Redis or a
Sentinel-managed primary.  On a Sentinel topology every key also carries the
primary's *epoch* and every batch ends with ``ROLE`` (:mod:`.failover`: no
value that predates a failover is ever served).  Redis Cluster has its own
backend, :mod:`.cluster`.

With a near cache (``examcache.near_cache_mb``, :mod:`.near`), a value this
process already holds is validated by ``HMGET v s t g`` instead: same round
trip, same proof, without the value's bytes.

With ``examcache.tracking`` (a single Redis, not Sentinel or Cluster), the near
cache is kept exact by Redis itself instead (:mod:`.tracking`,
:mod:`.tracked_near`): a held value is served after an ordering *barrier* --
one ``PING`` on the tracking connection shared by every request in flight --
with no command of its own; a value not held (or a barrier that fails: the
tracking connection is down) takes the validating read above, and the value it
read is inserted only if none of its keys changed meanwhile.

With read leases on top (``examcache.tracking_lease_ms``, :mod:`.read_lease`), a
held value is served with no barrier at all while this process's lease is valid;
the wait moves to the writers: :meth:`RedisBackend.invalidate` (and ``clear``)
return only once every process holding a lease has applied the change, or that
lease has run out. Every single-Redis backend runs the writer side when leases
are on, with or without tracking of its own.

Connections come from one pool per application with short socket/connect
timeouts and **no** client-side retries: a slow Redis must cost one timeout,
not three (the policy's circuit breaker handles the rest).
"""
from __future__ import annotations

import os
import threading
import time
import weakref
from typing import Iterable, Sequence

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ...topology import parse as parse_url, primary_pool, sentinel_manager
from . import failover
from .base import BYPASS_MS, SEP, Backend, Lookup, Status
from .near import NearCache
from .read_lease import LeaseWriter, ReadLease, new_reader_id, reader_tag
from .tracked_near import TrackedNearCache
from .tracking import InvalidationStream

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
# nothing behind, issue 18); one it finds is kept at least that long (only ever lengthened)
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


def make_client(url: str, socket_timeout: float, max_connections: int = 64) -> redis.Redis:
    """A client on its own pool: short timeouts, no retries, health checks (for a
    ``redis+sentinel://`` URL, a pool on the service's primary)."""
    options = dict(socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout,
                   retry=Retry(NoBackoff(), 0), max_connections=max_connections,
                   health_check_interval=30)
    topo = parse_url(url)
    if topo.kind == "sentinel":
        pool = primary_pool(topo, **options)
    else:
        pool = redis.ConnectionPool.from_url(url, **options)
    return redis.Redis(connection_pool=pool)


def _pack(*args: bytes | str | int) -> bytes:
    """One command in RESP (what redis-py's packer does, without its per-call overhead)."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        elif isinstance(arg, int):
            arg = b"%d" % arg
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


def _value_and_tags(p: str, key: str, tags) -> tuple[bytes, bytes]:
    """The value's key name and the packed ``GET`` of each tag version (the hit path's read)."""
    tag_prefix = f"{p}t:".encode()
    return (f"{p}v:{key}".encode(),
            b"".join(_pack(b"GET", tag_prefix + tag.encode()) for tag in tags))


def glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis glob pattern (SCAN MATCH, KEYS)."""
    return "".join("\\" + c if c in "*?[]\\^-" else c for c in text)


class _ThreadConnection:
    """One thread's connection; disconnected when the thread (and so this holder) goes."""

    __slots__ = ("conn", "pid", "epoch", "generation", "__weakref__")

    def __init__(self, conn, generation: int = 0) -> None:
        self.conn = conn
        self.pid = os.getpid()
        self.epoch: str | None = None  # the primary's replication ID (Sentinel only)
        self.generation = generation

    def __del__(self) -> None:
        if self.pid == os.getpid():  # never close a parent's socket from a forked child
            try:
                self.conn.disconnect()
            except Exception:  # noqa: BLE001 -- interpreter shutdown, socket already gone
                pass


def _after_fork(ref: "weakref.ref[RedisBackend]") -> None:
    """In a forked child: threads did not survive, and the parent's tracking socket, barrier
    numbers and lease are the parent's. Forget them (untouched: closing would close the
    parent's connection) and start this process's own."""
    backend = ref()
    if backend is None:
        return
    backend._forked_from = (backend._stream, backend._lease, backend._tracked)
    backend._conns_lock = threading.Lock()  # a parent thread may have held it at the fork
    backend._conns = weakref.WeakSet()
    backend._start_tracking()


class RedisBackend(Backend):
    errors = (redis.RedisError, OSError)

    def __init__(self, url: str, prefix: str = "examcache:", socket_timeout: float = 0.25,
                 client: redis.Redis | None = None, near_cache_bytes: int = 0,
                 tracking: bool = False, lease_ms: int = 0) -> None:
        self.client = client or make_client(url, socket_timeout)
        self.prefix = prefix
        topo = parse_url(url)
        #: Sentinel: keys carry the primary's epoch, batches end with ROLE (:mod:`.failover`)
        self._fenced = topo.kind == "sentinel"
        self._generation = 0  # bumped by +switch-master: every thread reconnects
        self._watch = None
        if self._fenced:
            self._watch = failover.SwitchWatch(sentinel_manager(topo, max(socket_timeout, 0.5)),
                                               topo.service, self._switched)
        self._tag_prefix = f"{prefix}t:"
        self._lookup = self.client.register_script(LOOKUP)
        self._fill = self.client.register_script(FILL)
        self._release = self.client.register_script(RELEASE)
        self._get = self.client.register_script(GET)
        self._local = threading.local()
        self._near = NearCache(near_cache_bytes) if near_cache_bytes > 0 else None
        self._tracked: TrackedNearCache | None = None
        self._stream: InvalidationStream | None = None
        self._barrier_timeout = socket_timeout
        #: read leases (:mod:`.read_lease`): this process's, and the writer side, which every
        #: single-Redis process runs when leases are on (a process without tracking may
        #: still write while others hold leases)
        self._lease: ReadLease | None = None
        self._writer: LeaseWriter | None = None
        self._lease_ms = lease_ms if topo.kind == "single" else 0
        self._near_cache_bytes = near_cache_bytes
        self._tracking = tracking and near_cache_bytes > 0 and topo.kind == "single"
        if self._tracking:
            self._near = None  # the tracked near cache replaces the validated one
        self._start_tracking()
        # pre-fork servers: the child gets its own stream, lease and reader id (never the
        # parent's socket, sequence numbers or lease)
        me = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _after_fork(me))
        # every thread's connection, weakly: a thread that ends drops its holder
        # (thread-local data dies with the thread), which disconnects it
        self._conns: weakref.WeakSet[_ThreadConnection] = weakref.WeakSet()
        self._conns_lock = threading.Lock()

    def _start_tracking(self) -> None:
        """The tracked near cache, its stream and this process's read lease (new ones, with
        a new reader id), and the lease writer."""
        prefix, lease_ms = self.prefix, self._lease_ms
        reader_id = new_reader_id()
        self._tracked = self._stream = self._lease = self._writer = None
        if self._tracking:
            self._tracked = TrackedNearCache(
                self._near_cache_bytes, lambda k: f"{prefix}v:{k}", lambda t: f"{prefix}t:{t}")
            pool = self.client.connection_pool
            kwargs = dict(pool.connection_kwargs)
            if lease_ms > 0:
                kwargs["client_name"] = reader_tag(prefix) + reader_id
            stream = InvalidationStream(kwargs, prefix, self._on_keys, self._on_flush,
                                        connection_class=pool.connection_class)
            if lease_ms > 0:
                self._lease = ReadLease(self.client, stream, prefix, reader_id, lease_ms,
                                        self._barrier_timeout)
            self._stream = stream.start()
            if self._lease is not None:
                self._lease.start()
        if lease_ms > 0:
            lease = self._lease
            self._writer = LeaseWriter(self.client, prefix, lease_ms, own=self._own_caught_up,
                                       own_id=reader_id if lease is not None else None,
                                       off=None if lease is None else lease.settled_off)
            self._writer.incr = getattr(self, "_incr", None)

    def _on_keys(self, redis_keys: list[str]) -> None:
        self._tracked.on_keys(redis_keys)
        if self._lease is not None:
            self._lease.notice(redis_keys)

    def _on_flush(self) -> None:
        if self._lease is not None:
            self._lease.revoke()
        self._tracked.on_flush()

    def _own_caught_up(self) -> bool:
        """After a write's fence: has this process applied every message before it? (Or
        can it not serve without a barrier anyway: its stream is down, and a reconnection
        flushes and revokes.)"""
        stream = self._stream
        return stream is None or stream.barrier(self._barrier_timeout) or not stream.healthy

    def read_lease_valid(self) -> bool:
        return self._lease is not None and self._lease.held()

    def attach_stats(self, incr) -> None:
        self._incr = incr
        if self._writer is not None:
            self._writer.incr = incr

    def peek_local(self, key, tags=()):
        """The held value of ``key`` when it may be served with no I/O and no wait: this
        process holds a valid read lease (:mod:`.read_lease`); else None."""
        lease = self._lease
        if lease is not None and lease.valid():
            return self._tracked.get(key, tags)
        return None

    def answers_locally(self) -> bool:
        """Read leases are on (one Redis, near cache ``lease``): :meth:`peek_local`
        may answer."""
        return self._lease is not None

    def _switched(self) -> None:
        """A sentinel announced a failover: every thread reconnects before its next call."""
        self._generation += 1

    def _valid(self, tags, stored_tags, stored_versions, current) -> bool:
        """Were the value's tags (as stored) ``tags``, with the versions just read?"""
        return stored_tags == SEP.join(tags).encode() and (
            not tags or stored_versions == SEP.encode().join(
                v if v is not None else b"\x00" for v in current))

    def _read(self, key: str, tags, holder=None) -> bytes | None:
        """The value of ``key`` if it is valid and was stored under exactly ``tags``
        (one pipelined round trip, no Lua; see the module docstring); else None."""
        if self._tracked is not None:
            return self._read_tracked(key, tags, holder)
        holder, p = holder or self._prepare()
        value_key, tag_gets = _value_and_tags(p, key, tags)
        near = self._near.get(key) if self._near is not None else None
        if near is not None:
            # the near-cache path: only the stamp and tag versions cross the wire
            replies = self._roundtrip(holder, _pack(b"HMGET", value_key, b"s", b"t", b"g")
                                      + tag_gets, 1 + len(tags))
            stamp, stored_tags, stored_versions = replies[0]
            if stamp == near[0] and self._valid(tags, stored_tags, stored_versions, replies[1:]):
                return near[1]
            self._near.discard(key)
        replies = self._roundtrip(holder, _pack(b"HMGET", value_key, b"d", b"s", b"t", b"g")
                                  + tag_gets, 1 + len(tags))
        data, stamp, stored_tags, stored_versions = replies[0]
        if data is not None and self._valid(tags, stored_tags, stored_versions, replies[1:]):
            if self._near is not None and stamp:
                self._near.put(key, stamp, data)
            return data
        return None

    def _read_tracked(self, key: str, tags, holder=None) -> bytes | None:
        """:meth:`_read` with the tracked near cache: a held value after a barrier (no
        command of its own), else the validating read, inserting what it read unless one
        of its keys changed since the mark (:mod:`.tracked_near`)."""
        tracked, stream, lease = self._tracked, self._stream, self._lease
        if lease is not None and lease.valid():  # no barrier: the writers waited (G2)
            data = tracked.get(key, tags)
            if data is not None:
                return data
        elif tracked.get(key, tags) is not None and stream.barrier(self._barrier_timeout):
            data = tracked.get(key, tags)  # every invalidation before the barrier is applied
            if data is not None:
                return data
        token = stream.mark()
        holder, p = holder or self._prepare()
        value_key, tag_gets = _value_and_tags(p, key, tags)
        replies = self._roundtrip(holder, _pack(b"HMGET", value_key, b"d", b"s", b"t", b"g")
                                  + _pack(b"PTTL", value_key) + tag_gets, 2 + len(tags))
        data, stamp, stored_tags, stored_versions = replies[0]
        if data is not None and self._valid(tags, stored_tags, stored_versions, replies[2:]):
            if stamp:
                tracked.put(key, tags, stamp, data, stream, token, replies[1])
            return data
        return None

    def near_cache_bytes(self) -> int:
        if self._tracked is not None:
            return self._tracked.nbytes
        return self._near.nbytes if self._near is not None else 0

    def lookup(self, key, token, lease_ttl, ttl, tags=()):
        holder, p = self._prepare()
        data = self._read(key, tags, (holder, p))
        if data is not None:
            return Lookup(Status.HIT, data)
        # a miss (or anything unusual): the atomic script decides and leases
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

    def fill(self, key, token, value, ttl, tags=(), versions=()):
        holder, p = self._prepare()
        stored = bool(self._eval(
            holder, FILL, self._fill.sha, (f"{p}v:{key}", f"{p}l:{key}"),
            (token, value, int(ttl), f"{p}t:", SEP.join(tags), SEP.join(versions))))
        if stored and self._near is not None:
            self._near.put(key, token.encode(), bytes(value))
        return stored

    def release(self, key, token):
        holder, p = self._prepare()
        self._eval(holder, RELEASE, self._release.sha, (f"{p}l:{key}",), (token, BYPASS_MS))

    def invalidate(self, keys=(), tags=()):
        if self._near is not None:
            for key in keys:
                self._near.discard(key)
        if self._tracked is not None:  # at once here; the DELs' messages do it everywhere
            self._tracked.on_keys([f"{self.prefix}v:{k}" for k in keys]
                                  + [f"{self.prefix}t:{t}" for t in tags])
        keys, tags = list(keys), list(tags)
        if not keys and not tags:
            return
        self._delete(keys, tags)
        if self._writer is not None:  # returns once no read lease can serve the old values
            self._writer.wait()

    def _delete(self, keys: list[str], tags: list[str]) -> None:
        """``DEL`` the values, leases and tag versions, retried on a fresh connection when
        the connection fails: once at once (Redis, a proxy or a NAT closed an idle pooled
        connection: not a fault), and with read leases on, again and again until the
        lease limit has passed since the first try -- a stall shorter than that (a
        ``DEBUG SLEEP``, a ``CLIENT PAUSE WRITE``) is waited out, so G2 holds through it.
        A connection that cannot be made at all (Redis down: every reader's stream is
        down too, their leases revoked) is not retried.  The last error is raised (the
        policy defers the invalidation: G4, G6)."""
        limit = self._writer.limit if self._writer is not None else 0.0
        started = time.monotonic()
        delay, attempt = 0.01, 0
        while True:
            try:
                holder, p = self._prepare()
                if attempt:  # a fresh connection; refused -> Redis is down, give up
                    holder.conn.connect()
                names = [name for key in keys for name in (f"{p}v:{key}", f"{p}l:{key}")]
                names += [f"{p}t:{tag}" for tag in tags]
                self._roundtrip(holder, _pack(b"DEL", *names), 1)
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
        conn = self._connection().conn
        try:
            conn.connect()
            return True
        except redis.TimeoutError:  # accepted but not answered: stalled, not gone
            return True
        except (redis.ConnectionError, OSError):
            return False

    def get(self, key, tags=()):
        holder, p = self._prepare()
        data = self._read(key, tags, (holder, p))
        if data is not None:
            return data
        return self._eval(holder, GET, self._get.sha, (f"{p}v:{key}",), (f"{p}t:",))

    def _prepare(self) -> tuple[_ThreadConnection, str]:
        """This thread's connection and the key prefix to use on it: on a
        Sentinel topology, connected to the current primary, with its epoch."""
        holder = self._connection()
        if not self._fenced:
            return holder, self.prefix
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

    def _connection(self) -> _ThreadConnection:
        """This thread's own connection (no pool checkout per call: on a hit
        that is a third of the client's CPU).  Recreated after a fork; closed
        when the thread ends."""
        holder = getattr(self._local, "holder", None)
        if holder is None or holder.pid != os.getpid():
            pool = self.client.connection_pool
            holder = _ThreadConnection(pool.connection_class(**pool.connection_kwargs),
                                       self._generation)
            self._local.holder = holder
            with self._conns_lock:
                self._conns.add(holder)
        return holder

    def _roundtrip(self, holder: _ThreadConnection, packed: bytes, replies: int) -> list:
        """Send pipelined commands, read ``replies`` replies (errors are raised).
        On a Sentinel topology the batch ends with ``ROLE``: its replies count only
        if the node was still the primary after running them (:mod:`.failover`)."""
        conn = holder.conn
        if self._fenced:
            packed += failover.ROLE
        try:
            conn.send_packed_command([packed])  # connects first if need be
            out = [conn.read_response() for _ in range(replies)]
            if self._fenced:
                failover.check_role(conn.read_response())
            return out
        except BaseException:
            conn.disconnect()  # replies may be left unread: never reuse it as is
            holder.epoch = None
            raise

    def _eval(self, holder, script: str, sha: str, keys: tuple, args: tuple):
        epoch = holder.epoch
        try:
            return self._roundtrip(holder, _pack(b"EVALSHA", sha, len(keys), *keys, *args), 1)[0]
        except redis.exceptions.NoScriptError:  # Redis restarted or SCRIPT FLUSH
            holder, _ = self._prepare()
            if holder.epoch != epoch:  # the keys were built for another primary
                raise failover.NotPrimary("the primary changed during the call") from None
            return self._roundtrip(holder, _pack(b"EVAL", script, len(keys), *keys, *args), 1)[0]

    def clear(self):
        if self._near is not None:
            self._near.clear()
        if self._tracked is not None:
            self._tracked.on_flush()
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
        if self._writer is not None:
            self._writer.wait()

    def ping(self):
        self.client.ping()

    def close(self):
        if self._watch is not None:
            self._watch.close()
        if self._lease is not None:
            self._lease.stop()
        if self._stream is not None:
            self._stream.stop()
        with self._conns_lock:
            holders, self._conns = list(self._conns), weakref.WeakSet()
        for holder in holders:
            holder.conn.disconnect()
        self.client.close()
        self.client.connection_pool.disconnect()
