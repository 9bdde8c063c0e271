"""Server-assisted invalidation for the near cache: ``CLIENT TRACKING`` plus an ordering barrier.

Wired into :class:`~.redis.RedisBackend` by ``examcache.near_cache`` = ``barrier`` or
``lease`` (:mod:`.tracked_near`): it tells a process which keys under its
prefix changed, and lets a request wait -- usually together with every other request in
flight -- until every change Redis made before the request started has been seen. With
read leases (:mod:`.read_lease`) only the lease keeper and the writers use the barrier.

One dedicated RESP2 connection per process does it all: ``CLIENT ID``, then ``CLIENT
TRACKING ON REDIRECT <its own id> BCAST PREFIX <prefix>``, then ``SUBSCRIBE
__redis__:invalidate``; a reader thread hands each message to ``on_keys`` (or
``on_flush``) -- the stream's own, or one shared by a Cluster's streams
(:class:`StreamGroup`). :meth:`InvalidationStream.barrier` waits for the reply to a ``PING``
sent after it began (group commit: one PING in flight serves every barrier that began
before it was sent); :meth:`InvalidationStream.mark` and
:meth:`InvalidationStream.unchanged` let a fill insert only what no message has
invalidated since its read.

Why a hit served after a barrier is never stale (G2), why the connection redirects to
itself, what happens when Redis refuses tracking or the connection is lost, and the
costs: ``docs/design/tracking.md``.
"""
from __future__ import annotations

import collections
import functools
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import redis

try:  # redis-py >= 7: maintenance notifications (RESP3 push messages)
    from redis.maint_notifications import MaintNotificationsConfig
except ImportError:  # older redis-py: nothing to turn off
    MaintNotificationsConfig = None  # type: ignore[assignment,misc]

log = logging.getLogger(__name__)

CHANNEL = "__redis__:invalidate"
#: how many recently invalidated keys are remembered for :meth:`InvalidationStream.unchanged`
RECENT = 65536
#: error replies that say "not now" rather than "never" (a failover; ``LOADING`` and the
#: like are already ``ConnectionError``s), and ``BUSY`` (a script running) below
TRANSIENT = (redis.exceptions.TryAgainError, redis.exceptions.ClusterDownError)
#: errors a probe (or a handshake) may raise: no answer, not a negative one
PROBE_ERRORS: tuple[type[BaseException], ...] = (redis.RedisError, OSError, ValueError)


class NotPrimaryAnymore(redis.ConnectionError):
    """The probe beside the stream found its node no longer the primary it connected to."""


class TrackingUnavailable(redis.RedisError):
    """Tracking can never work here: Redis refused a command of the handshake, or redis-py
    could not build the connection. Retrying would only repeat it."""


class InvalidationStream:
    """The tracking connection, its reader thread and the barrier.

    ``connection_kwargs``: how to reach Redis (``redis.Connection`` arguments; the protocol
    is forced to RESP2). ``prefix``: the key prefix tracked (BCAST). ``on_keys(keys)`` is
    called from the reader thread with the ``str`` keys of each message; ``on_flush()``
    when everything must be forgotten (a FLUSH message, a (re)connection, a loss).

    ``probe`` (Sentinel, Cluster: :class:`~.fenced_near.PrimaryProbe`): a second, plain
    connection to the node that travels with every barrier ``PING``: ``probe.send()`` just
    before the ``PING`` is sent, ``probe.same(node)`` read by the reader thread when its
    ``PONG`` arrives; its connection is opened by the reader thread only (``connect()``).
    A barrier then succeeds only if the probe sent with its ``PING`` (or a later one's)
    answered "the primary of :attr:`node`"; another answer breaks the connection (flush,
    reconnect), no answer fails the barriers waiting on that ``PING``.
    """

    def __init__(self, connection_kwargs: dict[str, Any], prefix: str,
                 on_keys: Callable[[list[str]], None], on_flush: Callable[[], None],
                 reconnect_delay: float = 0.5,
                 connection_class: type = redis.Connection,
                 handshake: Callable[[redis.Connection], Any] | None = None,
                 probe: Any = None) -> None:
        # RESP2; no socket timeout (the reader blocks until a message); and no redis-py
        # health check: it would send its own PING and read the reply on a request
        # thread, racing the reader (found by the bench after 30 s of idle)
        self.kwargs = {**connection_kwargs, "protocol": 2, "socket_timeout": None,
                       "health_check_interval": 0}
        if MaintNotificationsConfig is not None:
            # A redis-py >= 8 pool puts its maintenance-notification handler and config
            # ("auto" under RESP3) into every connection's kwargs. They are RESP3 push
            # messages, which this RESP2 connection never receives; and redis-py's
            # pure-Python RESP2 parser (no hiredis) refuses them at construction -- every
            # attempt raised, twice a second, and the near cache never served.
            self.kwargs["maint_notifications_config"] = MaintNotificationsConfig(enabled=False)
        self.connection_class = connection_class
        self.prefix = prefix
        self.on_keys, self.on_flush = on_keys, on_flush
        self.reconnect_delay = reconnect_delay
        #: run on each new connection before tracking starts (Sentinel, Cluster: which
        #: node and mastership this is, ``docs/design/topologies.md``); its result is :attr:`node`
        self.handshake = handshake
        self.node: Any = None
        self.probe = probe
        #: the PING numbers whose probe is sent and not yet read (oldest first)
        self._probed: collections.deque[int] = collections.deque()
        self._refused = 0  # the last PING whose probe gave no answer
        #: called by the reader thread once a barrier PING is answered and on every loss
        #: (:class:`~.fenced_near.JointBarrier`: rounds over several streams)
        self.on_settled: Callable[[InvalidationStream], None] | None = None
        self._conn: redis.Connection | None = None
        self._send_lock = threading.Lock()
        self._cond = threading.Condition()
        self._healthy = False
        self._epoch = 0  # +1 on every (re)connection and every loss
        self._seq = itertools.count(1)
        self._in_flight: int | None = None  # the PING sent and not yet answered
        self._in_flight_at = 0.0  # monotonic time it was sent
        self._next: int | None = None  # reserved by barriers that began after it was sent
        self._acked = 0
        self._messages = 0  # invalidation messages processed (for mark/unchanged)
        self._recent: dict[str, int] = {}  # key -> message number of its last invalidation
        self._floor = 0  # message number below which trimmed records may hide changes
        self.pings_sent = self.probes_sent = 0
        #: successful (re)connections, and losses of a connection that was healthy
        self.connections = self.losses = 0
        #: why tracking can never work here (logged once; the stream stays unhealthy)
        self.unavailable: str | None = None
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._outage = False  # logged when it starts and when it ends, not per attempt

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> InvalidationStream:
        self._thread = threading.Thread(target=self._run, name="examcache-tracking", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        conn = self._conn
        if conn is not None:
            try:
                conn.disconnect()
            except Exception:  # noqa: BLE001
                pass
        if self._thread is not None:
            self._thread.join(5)
        self._reset_probe()

    @property
    def healthy(self) -> bool:
        return self._healthy

    def drop(self) -> None:
        """Break the current connection (the reader sees the error, flushes and reconnects):
        for a connection that stopped answering without an error."""
        with self._send_lock:
            conn = self._conn
            if conn is not None:
                try:
                    conn.disconnect()  # shuts the socket down: the blocked read fails
                except Exception:  # noqa: BLE001
                    pass

    def wait_healthy(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._healthy, timeout)

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                self._read_forever(self.open_connection())
            except Exception as exc:  # noqa: BLE001 -- never let the reader die: reconnect
                if not self.failed(exc):
                    return
            finally:
                self.lose()
            self._stopped.wait(self.reconnect_delay)

    @property
    def connection(self) -> redis.Connection | None:
        """The tracking connection, None while there is none (read by :class:`StreamGroup`)."""
        return self._conn

    @property
    def pinging(self) -> bool:
        """Is a barrier ``PING`` in flight (its ``PONG`` not read yet)?"""
        return self._in_flight is not None

    def open_connection(self) -> redis.Connection:
        """Connect (:meth:`_connect`); an outage is logged when it starts and when it ends,
        not per attempt."""
        conn = self._connect()
        if self._outage:
            log.warning("cache tracking for %r: connection back; near cache serving again",
                        self.prefix)
        self._outage = False
        return conn

    def failed(self, exc: Exception) -> bool:
        """The connection (or an attempt) failed with ``exc``: log it; False if tracking can
        never work here (:class:`TrackingUnavailable`: not retried)."""
        if isinstance(exc, TrackingUnavailable):
            self.unavailable = str(exc)
            self.lose()
            log.warning("cache tracking for %r unavailable, not retried: %s. The near cache "
                        "serves nothing and every read validates against Redis; set "
                        "examcache.near_cache = check (formerly examcache.tracking = false) "
                        "to use the validated near cache instead", self.prefix, exc)
            return False
        if self._stopped.is_set():
            return True
        if not isinstance(exc, (redis.RedisError, OSError, ValueError)):
            log.error("cache tracking for %r: reader failed; reconnecting", self.prefix,
                      exc_info=exc)
        elif self._outage:  # (ValueError: redis-py reading a socket that stop() or drop() closed)
            log.debug("cache tracking for %r: reconnection failed (%s)", self.prefix, exc)
        else:
            log.warning("cache tracking for %r: connection lost (%s); near cache flushed, "
                        "reads validate against Redis until it is back", self.prefix, exc)
            self._outage = True
        return True

    def _connect(self) -> redis.Connection:
        try:
            conn = _connecting_once(self.connection_class)(**self.kwargs)
        except Exception as exc:  # noqa: BLE001 -- no I/O yet: the same arguments fail again
            raise TrackingUnavailable(f"redis-py cannot build the tracking connection "
                                      f"({type(exc).__name__}: {exc})") from exc
        try:
            conn.connect()
            node = self.handshake(conn) if self.handshake is not None else None
            conn.send_command("CLIENT", "ID")
            client_id = conn.read_response()
            conn.send_command("CLIENT", "TRACKING", "ON", "REDIRECT", client_id, "BCAST",
                              "PREFIX", self.prefix)
            reply = conn.read_response()
            if reply != b"OK":
                raise TrackingUnavailable(f"Redis answered {reply!r} to CLIENT TRACKING")
            conn.send_command("SUBSCRIBE", CHANNEL)
            conn.read_response()
        except redis.ResponseError as exc:
            conn.disconnect()
            if isinstance(exc, TRANSIENT) or str(exc).startswith("BUSY"):
                raise
            raise TrackingUnavailable(f"Redis refused the tracking handshake (CLIENT "
                                      f"SETNAME/ID/TRACKING, SUBSCRIBE) with "
                                      f"{type(exc).__name__}: {exc}") from exc
        except BaseException:
            conn.disconnect()
            raise
        self._connect_probe()
        with self._cond:
            self._conn = conn
            self.node = node
            self._epoch += 1
            self._recent.clear()
            self._floor = self._messages
        self.on_flush()  # what was cached before tracking (re)started may be stale
        with self._cond:
            self.connections += 1
            self._healthy = True
            self._cond.notify_all()
        return conn

    def lose(self) -> None:
        with self._cond:
            was = self._healthy
            self._healthy = False
            self._epoch += 1
            conn, self._conn = self._conn, None
            self._in_flight = self._next = None
            self._cond.notify_all()  # barrier waiters give up
        self._reset_probe()  # (a reply left unread is never taken for a later PING's)
        if conn is not None:
            try:
                conn.disconnect()  # never left open (a dead reader's socket stayed in Redis)
            except Exception:  # noqa: BLE001
                pass
        if self.on_settled is not None:
            self.on_settled(self)
        if was:
            self.losses += 1
            self.on_flush()

    def _read_forever(self, conn: redis.Connection) -> None:
        while not self._stopped.is_set():
            self.handle(conn.read_response())

    def handle(self, reply) -> None:
        """One reply read from the connection: a message, or the ``PONG`` of a barrier."""
        kind = reply[0]
        if kind == b"message":
            keys = reply[2]
            if keys is None:  # FLUSHALL / FLUSHDB
                with self._cond:
                    self._messages += 1
                    self._recent.clear()
                    self._floor = self._messages
                self.on_flush()
            else:
                names = [k.decode() if isinstance(k, bytes) else k for k in keys]
                with self._cond:
                    self._messages += 1
                    for name in names:
                        self._recent[name] = self._messages
                    if len(self._recent) > RECENT:
                        self._recent.clear()
                        self._floor = self._messages
                self.on_keys(names)
        elif kind == b"pong" and reply[1].isdigit():  # (else not one of our barrier PINGs)
            self._pong(int(reply[1]))

    def _pong(self, number: int) -> None:
        """``PING number`` answered: acknowledge it (if its probe says so), send the next."""
        answered = self.probe is None or self._probe_answer(number)
        send = None
        with self._cond:
            if answered:
                self._acked = max(self._acked, number)
            else:
                self._refused = max(self._refused, number)
            if self._in_flight == number:  # the next group's PING goes now
                self._in_flight, self._next = self._next, None
                if self._in_flight is not None:
                    self._in_flight_at = time.monotonic()
                    send = self._in_flight
            self._cond.notify_all()
        if send is not None:
            self._send(send)
        if self.on_settled is not None:
            self.on_settled(self)

    # -- the barrier ----------------------------------------------------------------------------

    def barrier(self, timeout: float) -> bool:
        """Wait until a PING sent after this call began has been answered (see the module
        docstring); ``False`` if the stream is unhealthy or the wait exceeds ``timeout``.

        Group commit: at most one PING is in flight. A barrier that begins while one is
        in flight that was sent *before* it began reserves the next PING, which the reader
        thread sends as soon as the one in flight is answered; every barrier that began in
        the meantime shares it. Under load: one PING per round trip, whatever the number
        of requests; alone: one round trip.
        """
        deadline = time.monotonic() + timeout
        return self.await_barrier(self.begin_barrier(), deadline)

    def begin_barrier(self) -> tuple[int, int] | None:
        """The first half of :meth:`barrier`: a ticket (None: unhealthy) to pass to
        :meth:`await_barrier` -- several streams' PINGs then travel at once."""
        started = time.monotonic()
        send = None
        with self._cond:
            if not self._healthy or self._conn is None:
                return None
            epoch = self._epoch
            if self._in_flight is not None and self._in_flight_at >= started:
                mine = self._in_flight
            elif self._in_flight is None:
                mine = send = self._in_flight = next(self._seq)
                self._in_flight_at = time.monotonic()
            else:
                if self._next is None:
                    self._next = next(self._seq)
                mine = self._next
        if send is not None:
            self._send(send)
        return mine, epoch

    def await_barrier(self, ticket: tuple[int, int] | None, deadline: float) -> bool:
        """The second half of :meth:`barrier`."""
        if ticket is None:
            return False
        mine, epoch = ticket
        with self._cond:
            ok = self._cond.wait_for(
                lambda: self._acked >= mine or self._refused >= mine or self._epoch != epoch
                or not self._healthy, max(0.0, deadline - time.monotonic()))
            return bool(ok) and self._acked >= mine and self._epoch == epoch

    def settled(self, ticket: tuple[int, int] | None) -> bool | None:
        """:meth:`await_barrier` without waiting: None while its ``PING`` is unanswered."""
        if ticket is None:
            return False
        mine, epoch = ticket
        with self._cond:
            if self._acked >= mine and self._epoch == epoch:
                return True
            if self._refused >= mine or self._epoch != epoch or not self._healthy:
                return False
            return None

    def _send(self, number: int) -> None:
        """Send ``PING <number>`` on the current connection, from the caller's thread (the
        reader thread is blocked reading it), after the probe if there is one. A connection
        that was lost is never reopened by this (:func:`_connecting_once`): a failure is the
        reader's to notice."""
        arg = str(number).encode()
        packed = b"*2\r\n$4\r\nPING\r\n$%d\r\n%s\r\n" % (len(arg), arg)
        with self._send_lock:
            conn = self._conn
            if conn is None:
                return
            if self.probe is not None:  # first: its reply is awaited once the PONG is read
                try:
                    self.probe.send()
                    self._probed.append(number)
                    self.probes_sent += 1
                except PROBE_ERRORS:
                    pass  # no probe for this PING: its barriers fail (_probe_answer)
            try:
                conn.send_packed_command([packed], check_health=False)
                self.pings_sent += 1
            except (redis.RedisError, OSError, AttributeError):
                pass  # (AttributeError: the reader dropped the socket meanwhile)

    def _probe_answer(self, number: int) -> bool:
        """On the reader thread, ``PING number`` answered: read the replies of the probes
        sent up to it.  True if the one sent with it says "the primary of :attr:`node`";
        False if there was none or it gave no answer (the probe is then reconnected here,
        never on a request thread); raises :class:`NotPrimaryAnymore` (a
        ``ConnectionError``: flush, reconnect) if any says another node or mastership is
        the primary."""
        probed, verdict = self._probed, False
        while probed and probed[0] <= number:
            sent = probed.popleft()
            try:
                same = self.probe.same(self.node)
            except PROBE_ERRORS as exc:
                log.debug("cache tracking for %r: the probe gave no answer (%s)",
                          self.prefix, exc)
                self._reset_probe()
                verdict = False
                break
            if not same:
                raise NotPrimaryAnymore(f"the probe found {self.node!r} no longer the "
                                        f"primary; near cache flushed")
            verdict = sent == number
        if not self.probe.connected:
            self._connect_probe()
        return verdict

    def _connect_probe(self) -> None:
        """Open the probe's connection on the reader thread: before the stream serves, and
        after a barrier found it closed (a request thread never pays a connection: a
        stalled node costs one barrier timeout)."""
        if self.probe is not None:
            with self._send_lock:
                try:
                    self.probe.connect()
                except PROBE_ERRORS as exc:
                    log.debug("cache tracking for %r: the probe could not connect (%s)",
                              self.prefix, exc)

    def _reset_probe(self) -> None:
        """Forget the probes in flight and close the probe's connection (their replies
        are never read)."""
        if self.probe is not None:
            with self._send_lock:
                self._probed.clear()
                self.probe.close()

    # -- safe fills ---------------------------------------------------------------------------

    def mark(self) -> tuple[int, int] | None:
        """A token to take *before* reading a value that may be put in the near cache."""
        with self._cond:
            return (self._epoch, self._messages) if self._healthy else None

    def unchanged(self, token: tuple[int, int] | None, keys: Iterable[str]) -> bool:
        """True if none of ``keys`` was invalidated since :meth:`mark` gave ``token`` (and
        the stream stayed connected): only then may the value read meanwhile be inserted."""
        if token is None:
            return False
        epoch, seen = token
        with self._cond:
            if not self._healthy or self._epoch != epoch or self._floor > seen:
                return False
            return all(self._recent.get(key, 0) <= seen for key in keys)


if TYPE_CHECKING:  # a mixin over redis-py's connection classes
    from redis.connection import AbstractConnection as _ConnectionBase
else:
    _ConnectionBase = object


class _ConnectOnce(_ConnectionBase):
    """Mixed into the tracking connection's class: it connects once.  redis-py reconnects a
    connection on a send after a disconnect; here that would open a stray connection
    (tracking off, no reader, no timeout) from a request thread, under the send lock."""

    connected_once = False

    def connect(self, *args, **kwargs):
        if self.connected_once:
            raise redis.ConnectionError("the tracking connection was lost: not reopened")
        super().connect(*args, **kwargs)
        self.connected_once = True

    def connect_check_health(self, *args, **kwargs):  # redis-py >= 6 reconnects through it
        if self.connected_once:
            raise redis.ConnectionError("the tracking connection was lost: not reopened")
        return super().connect_check_health(*args, **kwargs)


@functools.cache
def _connecting_once(connection_class: type) -> type:
    """``connection_class`` with :class:`_ConnectOnce` mixed in."""
    return type(f"Once{connection_class.__name__}", (_ConnectOnce, connection_class), {})


class StreamGroup:
    """One reader thread for several streams (a Cluster's primaries), in place of
    one per stream.  A joint barrier sends a ``PING`` on every stream at once, so the
    thread reads each stream in turn up to its ``PONG`` (blocking reads; the ``PONG`` of
    the others arrive meanwhile): one wake-up per round instead of one per stream.  With
    no ``PING`` in flight it drains what one stream (in turn) has ready and waits (``IDLE`` at
    most) on the last -- the last ``PING`` a round sends ends the wait.  Every stream keeps
    its own connection, state and guarantees (:class:`InvalidationStream`: a message is
    applied before the ``PONG`` that follows it); a lost connection is retried after its
    stream's ``reconnect_delay`` by the same thread.  Only public redis-py calls:
    ``read_response`` and ``can_read``."""

    IDLE = 0.05

    def __init__(self, streams: list[InvalidationStream]) -> None:
        self.streams = streams
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._retry_at = {stream: 0.0 for stream in streams}
        self._turn = 0

    def start(self) -> StreamGroup:
        self._thread = threading.Thread(target=self._run, name="examcache-tracking-group",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        for stream in self.streams:
            stream.stop()  # (closes its connection: a blocked read fails at once)
        if self._thread is not None:
            self._thread.join(5)
        for stream in self.streams:
            stream.lose()

    def _run(self) -> None:
        while not self._stopped.is_set():
            self._connect_due()
            live = self._live()
            if any(s.pinging for s in live):
                for stream in live:  # each PING in flight, up to its PONG
                    self._guarded(stream, lambda s, c: s.pinging)
                continue
            self._idle(live)

    def _live(self) -> list[InvalidationStream]:
        return [s for s in self.streams if s.connection is not None]

    def _guarded(self, stream: InvalidationStream, more: Callable) -> None:
        """Read ``stream``'s replies while ``more(stream, connection)``; a failure is the
        loss of that stream alone."""
        conn = stream.connection
        try:
            while conn is not None and not self._stopped.is_set() and more(stream, conn):
                stream.handle(conn.read_response())
        except Exception as exc:  # noqa: BLE001 -- never let the reader die: reconnect
            self._lost(stream, exc)

    def _lost(self, stream: InvalidationStream, exc: Exception) -> None:
        retry = stream.failed(exc)
        stream.lose()
        self._retry_at[stream] = time.monotonic() + stream.reconnect_delay if retry else \
            float("inf")

    def _connect_due(self) -> None:
        now = time.monotonic()
        for stream in self.streams:
            if stream.connection is None and self._retry_at[stream] <= now \
                    and not self._stopped.is_set():
                try:
                    stream.open_connection()
                except Exception as exc:  # noqa: BLE001
                    self._lost(stream, exc)

    def _idle(self, live: list[InvalidationStream]) -> None:
        """No PING in flight: read what one live stream (in turn) has, then wait on the last
        live stream until the next reconnection is due (``IDLE`` at most).  The wait is on the
        last because a joint round sends its ``PING``s in the group's order
        (:class:`~.fenced_near.JointBarrier` over the same list): a round that a request began
        sending while this thread found no ``PING`` in flight has not sent the last one yet,
        whose ``PONG`` then ends the wait (a wait on another stream, whose ``PONG`` had just
        been read, would hold the round for ``IDLE``).  Two polls per pass, not one per
        stream: a poll releases the GIL, and getting it back is what costs the most under
        load; the other streams are read on their turn or up to the next round's ``PONG``."""
        due = min((t for s, t in self._retry_at.items() if s.connection is None), default=None)
        timeout = self.IDLE if due is None else max(0.0, min(self.IDLE,
                                                             due - time.monotonic()))
        if not live:
            self._stopped.wait(timeout)
            return
        self._turn = (self._turn + 1) % len(live)
        if live[self._turn] is not live[-1]:
            self._guarded(live[self._turn], lambda s, c: c.can_read(0))
        polls = itertools.count()  # the first waits, the next only drain what is there
        self._guarded(live[-1], lambda s, c: c.can_read(timeout if next(polls) == 0 else 0))
