"""The ``barrier`` near cache on Sentinel and Cluster: tracking fenced by the primaries' identity.

:class:`~.tracked_near.BarrierNearCache` serves a held value after a barrier on one
tracking stream (``docs/design/tracking.md``).  With more than one Redis node a barrier
must also prove that the node(s) it waited on were the primaries of every key the entry
depends on, from the entry's read until after the request began.  Each stream here carries
a probe (:class:`PrimaryProbe`: ``INFO replication`` on a second, plain connection to its
node) that travels with each of the stream's barrier ``PING``: sent with it, read by the
stream's reader thread when the ``PONG`` arrives, and a barrier succeeds only if it answered
"master of the stream's mastership" (:class:`~.tracking.InvalidationStream`, ``probe``).
One group-committed round per round trip, driven by the reader thread as on one Redis;
requests wait for a round of :class:`JointBarrier` (every stream's ``PING`` and probe, one
wake-up per request and round):

* :class:`SentinelNearCache` -- one stream on the primary; its handshake reads the primary's
  *epoch* (replication ID, :mod:`.failover`).  A held value is served only to a request
  whose connection is in that epoch, after a barrier (and its probe) on the stream; a
  failover (the stream lost, ``+switch-master``, a request that reads another epoch, a probe
  that answers otherwise) drops the stream, which flushes everything before the new epoch
  serves.
* :class:`ClusterNearCache` -- one stream per primary (:class:`ClusterStreams`, BCAST on
  the prefix on each); a barrier waits on all of them (the ``PING``, probe pairs sent at
  once), each probe checks that its node is still a primary of the same mastership, and
  the client must know no other primary (checked once per round); a value is inserted only
  if every key it depends on maps to a node with a stream.  A lost node, a new primary or a
  demotion flushes everything.  The streams share one reader thread
  (:class:`~.tracking.StreamGroup`: one wake-up per round, not one per primary).

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
from .tracking import PROBE_ERRORS, InvalidationStream, StreamGroup

log = logging.getLogger(__name__)

__all__ = ["PROBE_ERRORS", "ClusterNearCache", "ClusterStreams", "PrimaryProbe",
           "SentinelNearCache", "primary_identity"]


#: ``INFO replication`` in RESP
INFO_REPLICATION = b"*2\r\n$4\r\nINFO\r\n$11\r\nreplication\r\n"


class PrimaryProbe:
    """A plain connection beside a stream (a subscribed RESP2 connection can only PING):
    :meth:`send`, then :meth:`same` is True when the node it reaches is a primary whose
    mastership is ``node`` (:func:`primary_identity`).  Sent with each barrier ``PING``
    and read by the stream's reader thread (:class:`~.tracking.InvalidationStream`)."""

    def __init__(self, connection_kwargs: dict[str, Any], connection_class: type) -> None:
        self.kwargs = {**connection_kwargs, "health_check_interval": 0}
        self.connection_class = connection_class
        self._conn: redis.Connection | None = None

    def connect(self) -> None:
        """Open the connection now if there is none."""
        if self._conn is None:
            conn = self._conn = self.connection_class(**self.kwargs)
            try:
                conn.connect()  # (a Sentinel connection asks the sentinels where to)
            except BaseException:
                self._lost(conn)
                raise

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def send(self) -> None:
        """Send ``INFO replication`` (never connects: the stream's reader thread does)."""
        conn = self._conn
        try:
            if conn is None:
                raise redis.ConnectionError("the probe's connection was lost")
            conn.send_packed_command([INFO_REPLICATION], check_health=False)
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
            return node is not None and failover.mastership(conn.read_response()) == node
        except BaseException:
            self._lost(conn)
            raise

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

    _epoch_key: tuple[Any, str] = (None, "")  # (stream.node, its key prefix)
    joint: JointBarrier

    def _start(self) -> None:
        super()._start()
        self.joint = JointBarrier([self.stream])  # (one wake-up per request and round)

    @staticmethod
    def _handshake(conn) -> str:
        return primary_identity(conn)

    def _new_probe(self) -> PrimaryProbe:
        pool = self.client.connection_pool
        return PrimaryProbe(pool.connection_kwargs, pool.connection_class)

    def _new_store(self) -> TrackedNearCache:
        return TrackedNearCache(self.max_bytes, lambda k: f"{self._epoch_prefix()}v:{k}",
                                lambda t: f"{self._epoch_prefix()}t:{t}")

    def _epoch_prefix(self, node: Any = None) -> str:
        """The key prefix of ``node``'s epoch (default: the stream's), built once per node."""
        node = self.stream.node if node is None else node
        known = self._epoch_key
        if known[0] is not node:
            known = self._epoch_key = (node, f"{self.prefix}{node}:")
        return known[1]

    def failover(self) -> None:
        """The primary may have changed: forget everything now and reconnect the stream
        (its reconnection flushes again, before it serves)."""
        self.tracked.on_flush()
        self.stream.drop()

    def _after_barrier(self, key, tags, conn) -> tuple[bytes | None, bool]:
        stream, tracked = self.stream, self.tracked
        node = stream.node
        if node is None or conn[1] != self._epoch_prefix(node) \
                or tracked.get(key, tags) is None:
            return None, False
        # the barrier's probe finds ``node`` the primary of its epoch after it began
        joint = self.joint
        if joint.streams[0] is stream and \
                joint.wait(time.monotonic() + self.barrier_timeout) and stream.node is node:
            return tracked.get(key, tags), False
        return None, True

    def _read(self, key, tags, conn) -> bytes | None:
        stream = self.stream
        token = stream.mark()
        node = stream.node  # read after the mark: a reconnection in between voids the token
        data, stamp, ttl_ms = self._fetch_expiring(key, tags, conn)
        if node is None or conn[1] != self._epoch_prefix(node):
            # not inserted. If the stream had a node, the read was answered by a primary (its
            # batch ended with ROLE) in another epoch than the stream's: the stream is on an
            # old primary. A stream not yet connected at the mark (reads racing its first
            # handshake) proves nothing of epochs, and its handshake flushes anyway
            if node is not None and stream.healthy:
                self.failover()
            return data
        if data is not None and stamp:
            self.tracked.put(key, tags, stamp, data, stream, token, ttl_ms)
        return data

    def drop(self, keys, tags):
        prefix = self._epoch_prefix()
        self.tracked.on_keys([f"{prefix}v:{k}" for k in keys] + [f"{prefix}t:{t}" for t in tags])


class _Round:
    """One round of :class:`JointBarrier`: a ticket per stream; ``done`` once settled."""

    __slots__ = ("sent_at", "tickets", "waiting", "done", "ok", "stale")

    def __init__(self) -> None:
        self.sent_at = 0.0
        #: the streams' tickets, once every PING (and probe) of the round is sent
        self.tickets: dict[InvalidationStream, Any] | None = None
        self.waiting: set[InvalidationStream] = set()  # streams whose ticket is unanswered
        self.done = threading.Event()
        self.ok = False
        self.stale = False  # every PING answered, but ``check`` failed after them


class JointBarrier:
    """Group commit over several streams (a Cluster's primaries): a round sends a barrier
    ``PING`` (with its probe) on every stream at once and succeeds once every one is
    acknowledged and then ``check()`` (if given) holds.  A request joins the round in flight
    if it was sent after the request began, else the next one, which the reader thread that
    settles the round in flight sends at once -- as one stream's group commit, with one
    wake-up per request and round whatever the number of streams.

    Cheap per round on purpose: the lock is never held across a send (a send
    releases the GIL, and under load it may take a switch interval to get it back: every
    reader and request would queue behind it); a ``PONG`` settles only its own stream's
    ticket; ``check`` runs once per round, on the thread that settles it, not per request."""

    def __init__(self, streams: list[InvalidationStream],
                 check: Callable[[], bool] | None = None) -> None:
        self.streams = streams
        self.check = check
        self._lock = threading.Lock()
        self._current: _Round | None = None  # sent (or being sent), not yet settled
        self._next: _Round | None = None  # for the requests that began after it was sent
        self.rounds = 0
        for stream in streams:
            stream.on_settled = self._settle

    def wait(self, deadline: float) -> bool:
        return self.join(deadline)[0]

    def join(self, deadline: float) -> tuple[bool, _Round]:
        """Wait for a round sent after this call began: ``(ok, the round)``."""
        started = time.monotonic()
        launch = None
        with self._lock:
            current = self._current
            if current is not None and current.sent_at >= started:
                joined = current
            elif current is None:
                joined = launch = self._begin(_Round())
            else:
                joined = self._next = self._next or _Round()
        if launch is not None:
            self._send(launch)
        return joined.done.wait(max(0.0, deadline - time.monotonic())) and joined.ok, joined

    def _begin(self, round_: _Round) -> _Round:
        """Make ``round_`` the one in flight (under the lock); :meth:`_send` sends it."""
        round_.sent_at = time.monotonic()  # before any of its PINGs is sent
        self._current = round_
        self.rounds += 1
        return round_

    def _send(self, round_: _Round) -> None:
        """Send ``round_``'s PING (and probe) on every stream, outside the lock; then settle
        what was answered (or refused) meanwhile."""
        tickets = {s: s.begin_barrier() for s in self.streams}
        with self._lock:
            round_.tickets = tickets
            results = {s: s.settled(t) for s, t in tickets.items()}
            round_.waiting = {s for s, r in results.items() if r is None}
            if self._current is not round_ or (None in results.values()
                                               and False not in results.values()):
                return  # (no streams: settled below; not current: cannot happen)
            finished = self._finish(round_, bool(results) and all(results.values()))
        self._complete(*finished)

    def _settle(self, stream: InvalidationStream) -> None:
        """On ``stream``'s reader thread, after a ``PONG`` or a loss: the round in flight is
        over once every stream answered its ``PING`` (ok) or one failed."""
        with self._lock:
            current = self._current
            if current is None or current.tickets is None or stream not in current.waiting:
                return  # (not sent yet: :meth:`_send` settles it)
            result = stream.settled(current.tickets[stream])
            if result is None:
                return  # still waiting
            current.waiting.discard(stream)
            if result and current.waiting:
                return
            finished = self._finish(current, result)
        self._complete(*finished)

    def _finish(self, current: _Round, ok: bool) -> tuple[_Round, bool, _Round | None]:
        """Under the lock: ``current`` is settled; the next round becomes the one in flight."""
        self._current, waiting, self._next = None, self._next, None
        if waiting is not None:
            self._begin(waiting)
        return current, ok, waiting

    def _complete(self, current: _Round, ok: bool, launch: _Round | None) -> None:
        """Outside the lock: send the next round, run ``check`` and wake ``current``'s
        requests."""
        if ok and self.check is not None and not self.check():
            current.stale, ok = True, False
        current.ok = ok
        current.done.set()
        if launch is not None:
            self._send(launch)


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
        self.group = StreamGroup([])  # their reader thread
        self.joint = JointBarrier([])
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
            old_group = self.group
            self.on_flush()
            streams = {}
            for address, node in self._primaries().items():
                pool = self.client.get_redis_connection(node).connection_pool
                kwargs = {**pool.connection_kwargs, "host": address[0], "port": address[1]}
                streams[address] = InvalidationStream(
                    kwargs, self.prefix, self.on_keys, self.on_flush,
                    connection_class=pool.connection_class, handshake=primary_identity,
                    probe=PrimaryProbe(kwargs, pool.connection_class))
            self.generation += 1
            self.streams = streams
            ordered = list(streams.values())  # (the group waits on the last PING a round sends)
            self.joint = JointBarrier(ordered, check=self.current)
            self.group = StreamGroup(ordered)
            self.rebuilds += 1
            group = self.group
        group.start()
        old_group.stop()  # (the streams' connections and probes closed)

    def current(self) -> bool:
        """Do the streams cover exactly the client's primaries?"""
        return set(self._primaries()) == set(self.streams)


    @property
    def healthy(self) -> bool:
        streams = self.streams
        return bool(streams) and all(s.healthy for s in streams.values())

    def barrier(self, timeout: float) -> bool:
        """A round of :class:`JointBarrier`: a barrier on every stream (each with its probe:
        "still the primary it connected to"), all sent at once; then (``check``, once per
        round, after every ``PONG`` of it) the client must know no primary without a stream
        (else the set is rebuilt, everything flushed)."""
        deadline = time.monotonic() + timeout
        generation, joint = self.generation, self.joint  # (the streams of one generation)
        if not joint.streams:
            return False
        ok, round_ = joint.join(deadline)
        if round_.stale:
            log.warning("cache tracking for %r: the cluster's primaries changed; near cache "
                        "flushed", self.prefix)
            self.rebuild(generation)
            return False
        return ok and self.joint is joint  # (no rebuild since: those are still the streams)

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
        self.group.stop()  # (the streams' connections and probes closed)

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
