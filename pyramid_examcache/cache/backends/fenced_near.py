"""The ``barrier`` near cache on Sentinel and Cluster: tracking fenced by the primaries' identity.

:class:`~.tracked_near.BarrierNearCache` serves a held value after a barrier on one
tracking stream (``docs/design/tracking.md``).  With more than one Redis node a barrier
must also prove that the node(s) it waited on were the primaries of every key the entry
depends on, from the entry's read until after the request began:

* :class:`SentinelNearCache` -- one stream on the primary; its handshake reads the primary's
  *epoch* (replication ID, :mod:`.failover`).  A held value is served only to a request
  whose connection is in that epoch, after a barrier on the stream *and* a group-committed
  ``INFO replication`` on a second connection (:class:`PrimaryProbe`) that answers "master
  of this epoch"; a failover (the stream lost, ``+switch-master``, a request that reads
  another epoch, a probe that fails) drops the stream, which flushes everything before
  the new epoch serves.
* :class:`ClusterNearCache` -- one stream per primary (:class:`ClusterStreams`, BCAST on
  the prefix on each); a barrier waits on all of them, and the probe checks that each is
  still a primary of the same mastership and that the client knows no other primary; a
  value is inserted only if every key it depends on maps to a node with a stream.  A
  lost node, a new primary or a demotion flushes everything.

The proofs (and the residual split-brain windows they share with the validated path):
``docs/design/topologies.md``, "Tracking on Sentinel" and "Tracking on Cluster".
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from . import failover
from .tracked_near import BarrierNearCache, TrackedNearCache
from .tracking import InvalidationStream

log = logging.getLogger(__name__)

#: errors a probe or a handshake may raise (redis-py's cluster errors are no RedisError)
PROBE_ERRORS: tuple[type[BaseException], ...] = (redis.RedisError, OSError, ValueError)


class GroupCheck:
    """Group commit of a synchronous check: :meth:`wait` returns the result of a run of
    ``check()`` that began after :meth:`wait` was called.  One run at a time; every caller
    that arrived during a run shares the next one."""

    def __init__(self, check: Callable[[], bool]) -> None:
        self._check = check
        self._cond = threading.Condition()
        self._started = 0
        self._running = False
        self._last = (0, False)  # (run number, result) of the last finished run
        self.runs = 0

    def wait(self, deadline: float) -> bool:
        with self._cond:
            need = self._started + 1  # a run that starts from now on
            while True:
                if self._last[0] >= need:
                    return self._last[1]
                if not self._running:
                    self._running = True
                    self._started += 1
                    run = self._started
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._cond.wait(remaining):
                    return False
        ok = False
        try:
            ok = bool(self._check())
        except Exception:  # noqa: BLE001 -- a failed check is a negative answer
            ok = False
        finally:
            with self._cond:
                self.runs += 1
                self._running = False
                self._last = (run, ok)
                self._cond.notify_all()
        return ok


class PrimaryProbe:
    """A plain connection beside a stream (a subscribed RESP2 connection can only PING):
    ``probe(node)`` is True when the node it reaches is a primary whose mastership is
    ``node`` (:func:`primary_identity`)."""

    def __init__(self, connection_kwargs: dict[str, Any], connection_class: type) -> None:
        self.kwargs = {**connection_kwargs, "health_check_interval": 0}
        self.connection_class = connection_class
        self._conn: redis.Connection | None = None

    def send(self) -> None:
        """Send ``INFO replication`` (connecting first if need be)."""
        conn = self._conn
        try:
            if conn is None:
                conn = self._conn = self.connection_class(**self.kwargs)
                conn.connect()  # (a Sentinel connection asks the sentinels where to)
            conn.send_command("INFO", "replication")
        except BaseException:
            self._lost(conn)
            raise

    def same(self, node: Any) -> bool:
        """Read the reply: is the node still a primary, of the mastership ``node``?  False
        is an answer (a replica, another mastership); an error is no answer (raised)."""
        conn = self._conn
        try:
            if conn is None:
                raise redis.ConnectionError("the probe's connection was lost")
            return node is not None and failover.replication_epoch(
                conn, conn.read_response()) == node
        except failover.NotPrimary:
            return False
        except BaseException:
            self._lost(conn)
            raise

    def __call__(self, node: Any) -> bool:
        self.send()
        return self.same(node)

    def _lost(self, conn) -> None:
        if conn is not None:
            conn.disconnect()
        self._conn = None

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.disconnect()


def primary_identity(conn) -> str:
    """The mastership of the node ``conn`` is connected to: its replication ID, which Redis
    renews on every promotion and restart (the epoch of :func:`.failover.primary_epoch`;
    raises ``NotPrimary`` for a replica).  ``conn`` is connected already (a tracking
    connection is never reconnected)."""
    conn.send_command("INFO", "replication")
    return failover.replication_epoch(conn, conn.read_response())


class SentinelNearCache(BarrierNearCache):
    """``barrier`` on a Sentinel-managed primary (module docstring).  ``conn`` of
    :meth:`get` is the backend's ``(holder, key prefix with the request's epoch)``."""

    def _start(self) -> None:
        self.tracked = self._new_store()
        self.stream = self._new_stream({})
        pool = self.client.connection_pool
        self.probe = PrimaryProbe(pool.connection_kwargs, pool.connection_class)
        self.check = GroupCheck(self._round)
        self.stream.start()

    @staticmethod
    def _handshake(conn) -> str:
        return primary_identity(conn)

    def _new_store(self) -> TrackedNearCache:
        return TrackedNearCache(self.max_bytes, lambda k: f"{self._epoch_prefix()}v:{k}",
                                lambda t: f"{self._epoch_prefix()}t:{t}")

    def _epoch_prefix(self) -> str:
        return f"{self.prefix}{self.stream.node}:"

    def _round(self) -> bool:
        """One group's fence: a PING on the stream and ``INFO replication`` on the probe,
        both sent now, both answered as they must be (module docstring)."""
        stream = self.stream
        deadline = time.monotonic() + self.barrier_timeout
        ticket = stream.begin_barrier()
        if ticket is None:
            return False
        node = stream.node
        try:
            same = self.probe(node)
        except PROBE_ERRORS:
            return False  # no answer (a stall, a lost node): not served; the stream decides
        if not same:
            log.warning("cache tracking for %r: the primary changed (probe); near cache "
                        "flushed", self.prefix)
            self.failover()
            return False
        return stream.await_barrier(ticket, deadline)

    def failover(self) -> None:
        """The primary may have changed: forget everything now and reconnect the stream
        (its reconnection flushes again, before it serves)."""
        self.tracked.on_flush()
        self.stream.drop()

    def get(self, key, tags, conn):
        stream, tracked = self.stream, self.tracked
        node = stream.node
        if conn[1] == f"{self.prefix}{node}:" and tracked.get(key, tags) is not None:
            if self.check.wait(time.monotonic() + self.barrier_timeout) and stream.node is node:
                data = tracked.get(key, tags)
                if data is not None:
                    return data
        return self._read(key, tags, conn)

    def _read(self, key, tags, conn) -> bytes | None:
        stream = self.stream
        token = stream.mark()
        node = stream.node  # read after the mark: a reconnection in between voids the token
        data, stamp, ttl_ms = self._fetch_expiring(key, tags, conn)
        if conn[1] != f"{self.prefix}{node}:":
            # the read was answered by a primary (its batch ended with ROLE) in another
            # epoch than the stream's: the stream is on an old primary, or not connected
            if stream.healthy:
                self.failover()
            return data
        if data is not None and stamp:
            self.tracked.put(key, tags, stamp, data, stream, token, ttl_ms)
        return data

    def drop(self, keys, tags):
        prefix = self._epoch_prefix()
        self.tracked.on_keys([f"{prefix}v:{k}" for k in keys] + [f"{prefix}t:{t}" for t in tags])

    def close(self):
        super().close()
        self.probe.close()


class ClusterStreams:
    """One :class:`~.tracking.InvalidationStream` per primary of a Redis Cluster, behind the
    one-stream interface :class:`~.tracked_near.BarrierNearCache` uses (``barrier``,
    ``mark``, ``unchanged``, ``healthy``, ``drop``, ``stop``).  The set is rebuilt (and
    everything flushed) when the client's primaries differ from the streams' nodes."""

    def __init__(self, client, prefix: str, on_keys, on_flush, barrier_timeout: float) -> None:
        self.client, self.prefix = client, prefix
        self.on_keys, self.on_flush = on_keys, on_flush
        self.barrier_timeout = barrier_timeout
        self._lock = threading.Lock()
        self.generation = 0
        self.streams: dict[tuple[str, int], InvalidationStream] = {}
        self.probes: dict[tuple[str, int], PrimaryProbe] = {}
        self.check = GroupCheck(self._round)
        self.rebuilds = 0
        self._stopped = False

    def _primaries(self) -> dict[tuple[str, int], Any]:
        return {(n.host, int(n.port)): n for n in self.client.get_primaries()}

    def start(self) -> ClusterStreams:
        self.rebuild()
        return self

    def rebuild(self, seen: int | None = None) -> None:
        """Streams on the client's primaries now; everything held is forgotten.  ``seen``:
        the generation the caller found wanting (another thread may have rebuilt since)."""
        with self._lock:
            if self._stopped or (seen is not None and seen != self.generation):
                return
            old, oldp = self.streams, self.probes
            self.on_flush()
            streams, probes = {}, {}
            for address, node in self._primaries().items():
                pool = self.client.get_redis_connection(node).connection_pool
                kwargs = {**pool.connection_kwargs, "host": address[0], "port": address[1]}
                streams[address] = InvalidationStream(
                    kwargs, self.prefix, self.on_keys, self.on_flush,
                    connection_class=pool.connection_class, handshake=primary_identity)
                probes[address] = PrimaryProbe(kwargs, pool.connection_class)
            self.generation += 1
            self.streams, self.probes = streams, probes
            self.rebuilds += 1
        for stream in streams.values():
            stream.start()
        for stream in old.values():
            stream.stop()
        for probe in oldp.values():
            probe.close()

    def current(self) -> bool:
        """Do the streams cover exactly the client's primaries?"""
        return set(self._primaries()) == set(self.streams)

    def _round(self) -> bool:
        """One group's fence: a PING on every stream and ``INFO replication`` to every
        stream's node (pipelined), all sent now, all answered as they must be."""
        deadline = time.monotonic() + self.barrier_timeout
        generation, streams, probes = self.generation, self.streams, self.probes
        tickets = [(s, s.begin_barrier()) for s in streams.values()]
        if not tickets or any(t is None for _, t in tickets):
            return False
        try:
            for probe in probes.values():
                probe.send()
            answers = [probes[a].same(s.node) for a, s in streams.items()]  # read every reply
        except PROBE_ERRORS:
            for probe in probes.values():  # never read a reply left unread in a later round
                probe.close()
            return False  # no answer (a stall, a lost node): not served; the streams decide
        same = all(answers) and self.current()
        if not same:
            log.warning("cache tracking for %r: the cluster's primaries changed; near cache "
                        "flushed", self.prefix)
            self.rebuild(generation)
            return False
        return all(s.await_barrier(t, deadline) for s, t in tickets) and self.streams is streams

    @property
    def healthy(self) -> bool:
        streams = self.streams
        return bool(streams) and all(s.healthy for s in streams.values())

    def barrier(self, timeout: float) -> bool:
        return self.check.wait(time.monotonic() + timeout)

    def mark(self) -> tuple[int, dict] | None:
        streams = self.streams
        marks = {a: s.mark() for a, s in streams.items()}
        if not marks or any(m is None for m in marks.values()):
            return None
        return self.generation, marks

    def unchanged(self, token, keys) -> bool:
        if token is None:
            return False
        generation, marks = token
        streams = self.streams
        keys = list(keys)
        return generation == self.generation and all(
            streams[a].unchanged(m, keys) for a, m in marks.items())

    def covers(self, redis_keys) -> bool:
        """Does every one of ``redis_keys`` map (in the client's slot map) to a streamed node?"""
        streams = self.streams
        for name in redis_keys:
            node = self.client.get_node_from_key(name)
            if (node.host, int(node.port)) not in streams:
                return False
        return True

    def drop(self) -> None:
        for stream in self.streams.values():
            stream.drop()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
        for stream in self.streams.values():
            stream.stop()
        for probe in self.probes.values():
            probe.close()

    @property
    def connections(self) -> int:
        return sum(s.connections for s in self.streams.values())


class ClusterNearCache(BarrierNearCache):
    """``barrier`` on a Redis Cluster (module docstring); ``conn`` of :meth:`get` is unused."""

    stream: ClusterStreams  # type: ignore[assignment]

    def _start(self) -> None:
        self.tracked = self._new_store()
        self.stream = ClusterStreams(self.client, self.prefix, self._on_keys, self._on_flush,
                                     self.barrier_timeout)
        self.stream.start()

    def _new_store(self) -> TrackedNearCache:
        prefix = self.prefix
        return TrackedNearCache(self.max_bytes, lambda k: f"{prefix}v:{{{k}}}",
                                lambda t: f"{prefix}t:{t}")

    def _read(self, key, tags, conn) -> bytes | None:
        streams = self.stream
        token = streams.mark()
        data, stamp, ttl_ms = self._fetch_expiring(key, tags, conn)
        if data is not None and stamp:
            deps = [self.tracked.value_key(key), *(self.tracked.tag_key(t) for t in tags)]
            if not streams.covers(deps):  # a primary without a stream: a new topology
                streams.rebuild(token[0] if token is not None else None)
                return data
            self.tracked.put(key, tags, stamp, data, streams, token,  # type: ignore[arg-type]
                             ttl_ms)
        return data

    def drop(self, keys, tags):
        prefix = self.prefix
        self.tracked.on_keys([f"{prefix}v:{{{k}}}" for k in keys]
                             + [f"{prefix}t:{t}" for t in tags])
