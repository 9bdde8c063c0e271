"""The stateful property test of issue 6, extended to the tracked near cache (issue 11).

One process under test -- a :class:`RedisBackend` with ``tracking=True`` -- whose data
connections go straight to a private redis-server while its *tracking connection* goes
through a :class:`~.proxy.RespProxy`, which forwards whole RESP frames and can hold them
back in either direction (invalidation messages and PONGs delayed, PINGs delayed), let
the first ``n`` held frames through, or cut the connection (and refuse new ones until
healed).  Hypothesis interleaves, in any order:

* another process (its own backend, no near cache) committing writes of a key: the key,
  one of its tags, or both invalidated -- and refilling it, or not; ``FLUSHALL``; a key
  expiring; a restart of redis-server (rarely: it costs ~0.1 s);
* this process reading (``get``; ``lookup``, whose lease it fills at once or later --
  possibly after a write made the loaded value stale), invalidating, and losing a near
  entry to its memory bound;
* up to two *parked* reads of this process: a ``get`` in its own thread that waits at
  the barrier (a long timeout) while the next steps run -- writes, releases of held
  frames one by one, losses, FLUSHALL -- then is joined;
* the tracking connection: held / released (all or the first 1-2 frames), cut (and
  restored at once, or later), killed by Redis (``CLIENT KILL TYPE pubsub``), waited for;
* two races driven from inside the read: a write (or a loss of the tracking connection
  with writes during it) between the validating read and the near-cache insert, and a
  write between a barrier's start and its PING (or just after the PING).

What is checked (G2, and issue 11's rule for a lost invalidation connection):

(a) a read of this process that runs alone returns *exactly* what a backend without any
    near cache reads at that moment (the store is static while it runs: every writer
    is a step of this machine); a read racing a write returns the value before or after
    it, and the next read returns the value after it;
(b) a parked read returns a value the key had at some moment between its start and its
    end (or nothing) -- never one replaced before it started;
(c) a value served from the near cache (no data-connection command for the read) is
    never served while the tracking connection is cut, and was inserted after the last
    loss of the tracking connection; when the loss is noticed the near cache is empty;
(d) the store never holds a value older than the last committed write of its key (the
    lease protocol of issue 6, with this process's fills);
(e) with frames held, reads fall back to the validating read within the barrier's
    timeout (they never hang).

Time: the barrier timeout of an ordinary read is ``SHORT`` (20 ms: while frames are
held a read costs that); parked reads use ``LONG``.  No sleep is a proof of anything:
conditions are polled with deadlines, and a deadline that runs out is a failure.
``test_scripted_interleavings`` replays the races that matter through the same machine
so that every run hits them.
"""
from __future__ import annotations

import concurrent.futures
import threading
import time
import uuid
from collections import Counter
from unittest import mock

import pytest
import redis
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from pyramid_examcache.cache.backends import tracked_near
from pyramid_examcache.cache.backends.base import Status
from pyramid_examcache.cache.backends.redis import RedisBackend, glob_escape

from .proxy import DOWN, UP, RespProxy
from .stateful import KEYS, MODE, assert_saw, derandomized, play, targets

#: key -> the tags its value is stored under
KEY = st.sampled_from(sorted(KEYS))
RARELY = st.sampled_from([False, False, False, True])
TTL = 600
LEASE = 5.0
SHORT = 0.02  # barrier timeout of an ordinary read
LONG = 3.0  # barrier timeout of a parked read (it waits for the test's releases)
DEADLINE = 3.0  # polled conditions
ERRORS = RedisBackend.errors

SETTINGS = derandomized("EXAMCACHE_TRACKING_EXAMPLES", 40, 35)


def poll(predicate, what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached after {timeout} s")
        time.sleep(0.001)


def retrying(fn, *args):
    """A call that may meet a connection a restarted redis-server closed: once more."""
    try:
        return fn(*args)
    except ERRORS:
        return fn(*args)


class Parked:
    """A ``get`` of this process in its own thread, waiting at the barrier."""

    def __init__(self, key: str, start_state, losses: int) -> None:
        self.key = key
        self.allowed = {start_state, None}
        self.losses = losses
        self.entered = threading.Event()
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="parked")
        self.future: concurrent.futures.Future | None = None
        self.roundtrips = 0
        self.barrier_ok: bool | None = None


class TrackingMachine(RuleBasedStateMachine):
    server = None  # the PrivateRedis of the test
    counts: Counter = Counter()

    def __init__(self) -> None:
        super().__init__()
        self.seen: Counter = Counter()
        self._seen_lock = threading.Lock()
        self.prefix = f"trs:{uuid.uuid4().hex[:10]}:"
        self.db = {k: 0 for k in KEYS}  # last committed version of each key
        self.serial = 0
        self.losses = 0  # losses of the tracking connection caused so far
        self.inserted_at: dict[str, int] = {}  # key -> self.losses when its entry went in
        self.leases: dict[str, tuple[str, tuple, int]] = {}  # this process's parked leases
        self.parked: list[Parked] = []
        self._tl = threading.local()
        self._put_hook = None
        self._send_hook = None
        url = self.server.url
        self.proxy = RespProxy("127.0.0.1", self.server.port).start()
        real_stream = tracked_near.InvalidationStream

        def stream(kwargs, prefix, on_keys, on_flush, **kw):  # the tracking connection: proxied
            return real_stream({**kwargs, "port": self.proxy.port}, prefix, on_keys, on_flush,
                               reconnect_delay=0.005, **kw)

        with mock.patch.object(tracked_near, "InvalidationStream", stream):
            self.tb = RedisBackend(url, prefix=self.prefix, socket_timeout=1.0,
                                   near_cache_bytes=1 << 20, tracking=True)
        self.other = RedisBackend(url, prefix=self.prefix, socket_timeout=1.0)
        self.observer = RedisBackend(url, prefix=self.prefix, socket_timeout=1.0)
        self.raw = redis.Redis(port=self.server.port)
        self.stream, self.near = self.tb._stream, self.tb._tracked
        self._instrument()
        assert self.stream.wait_healthy(DEADLINE)

    # -- instrumentation -----------------------------------------------------------------
    def see(self, event: str, n: int = 1) -> None:
        with self._seen_lock:
            self.seen[event] += n

    def _instrument(self) -> None:
        tb, stream, near = self.tb, self.stream, self.near
        real_roundtrip, real_barrier = tb._roundtrip, stream.barrier
        real_send, real_put = stream._send, near.put

        def roundtrip(*args):
            self._tl.roundtrips = getattr(self._tl, "roundtrips", 0) + 1
            return real_roundtrip(*args)

        def barrier(timeout):
            parked = getattr(self._tl, "parked", None)
            if parked is not None:
                parked.entered.set()
            ok = real_barrier(LONG if parked is not None else SHORT)
            if parked is not None:
                parked.barrier_ok = ok
            self.see("barrier_ok" if ok else "barrier_failed")
            return ok

        def send(number):
            hook = self._send_hook if threading.current_thread() is threading.main_thread() \
                else None
            if hook is not None:
                self._send_hook = None
                hook("before")
            real_send(number)
            if hook is not None:
                hook("after")

        def put(key, tags, stamp, data, stream_, token, ttl_ms=None):
            hook = self._put_hook if threading.current_thread() is threading.main_thread() \
                else None
            if hook is not None:
                self._put_hook = None
                hook()
            losses = self.losses
            done = real_put(key, tags, stamp, data, stream_, token, ttl_ms)
            if done:
                self.inserted_at[key] = losses
            elif token is not None:
                self.see("insert_refused")
            return done

        tb._roundtrip, stream.barrier, stream._send, near.put = roundtrip, barrier, send, put
        self.real_barrier = real_barrier

    # -- the model ---------------------------------------------------------------------------
    def value(self, key: str, version: int) -> bytes:
        self.serial += 1
        return f"{key}:{version}:{self.serial}".encode()

    def state(self, key: str) -> bytes | None:
        """What a backend without a near cache reads now."""
        return retrying(self.observer.get, key, KEYS[key])

    def _tracked_read(self, key: str, via: str = "get"):
        self._tl.roundtrips = 0
        if via == "peek":  # early hits' read: the held value after the barrier, never a read
            result = retrying(self.tb.peek_after_barrier, key, KEYS[key])
            assert self._tl.roundtrips == 0, "peek_after_barrier read from Redis"
            self.see("peek_hit" if result is not None else "peek_none")
            return result, 0
        if via == "get":
            return retrying(self.tb.get, key, KEYS[key]), self._tl.roundtrips
        token = uuid.uuid4().hex
        found = retrying(self.tb.lookup, key, token, LEASE, TTL, KEYS[key])
        if found.status is Status.HIT:
            return found.value, self._tl.roundtrips
        if found.status is Status.LEASED:
            self.see("tracked_leased")
            self.leases[key] = (token, found.versions, self.db[key])
        return None, self._tl.roundtrips

    def read_and_check(self, key: str, via: str = "get", allowed=None) -> bytes | None:
        """(a) and (c) for one read of this process."""
        before = self.state(key)
        result, roundtrips = self._tracked_read(key, via)
        if allowed is None:
            allowed = {before, None} if via == "peek" else {before}
            if via == "lookup" and result is None:  # not a hit: a lease, or a wait
                assert before is None, f"lookup({key}) missed {before!r}, a valid value"
        assert result in allowed, (
            f"this process read {key}={result!r}; the store held {before!r} when the "
            f"read began (allowed: {sorted(map(repr, allowed))})")
        if result is not None and roundtrips == 0:  # served from the near cache
            self.see("near_hit")
            if self.db[key] > 1:
                self.see("near_hit_after_writes")
            assert not self.proxy.is_cut, (
                f"{key} served from the near cache while the tracking connection is cut")
            assert self.inserted_at.get(key) == self.losses, (
                f"{key} served from the near cache without revalidation, from an entry "
                f"inserted before the tracking connection was lost")
        elif result is not None:
            self.see("validated_read")
        if self.proxy.holding(DOWN) or self.proxy.holding(UP):
            self.see("read_while_held")
        return result

    def _commit(self, key: str, mode: str, backend=None) -> None:
        """A committed write of ``key`` and its invalidation (acknowledged on return)."""
        self.db[key] = max(self.db.values()) + 1
        keys, tags = targets(key, mode)
        retrying((backend or self.other).invalidate, keys, tags)

    def _fill_other(self, key: str) -> None:
        token = uuid.uuid4().hex
        found = retrying(self.other.lookup, key, token, LEASE, TTL, KEYS[key])
        if found.status is Status.LEASED:
            assert retrying(self.other.fill, key, token, self.value(key, self.db[key]), TTL,
                            KEYS[key], found.versions), "a fill with nothing racing it failed"

    def _release_all(self) -> None:
        for direction in (UP, DOWN):
            self.proxy.release(direction)

    # -- another process --------------------------------------------------------------------
    @rule(key=KEY, mode=MODE, refill=st.booleans())
    def write(self, key, mode="key", refill=False):
        """Another process commits a write of ``key``; maybe refills it."""
        self._commit(key, mode)
        if refill:
            self._fill_other(key)

    @rule(key=KEY)
    def fill_other(self, key):
        self._fill_other(key)

    @rule()
    def flushall(self):
        retrying(self.raw.flushall)
        self.leases.clear()

    @rule(key=KEY)
    def expire(self, key):
        """The value's TTL runs out (or it is evicted): Redis deletes it."""
        name = f"{self.prefix}v:{key}"
        retrying(self.raw.pexpire, name, 1)
        poll(lambda: not retrying(self.raw.exists, name), "expired")

    @rule(really=RARELY)
    def restart(self, really=False):
        """redis-server restarts: a new run id, no data, every connection closed."""
        if not really:
            return
        self.losses += 1
        self.server.stop()
        self.server.start()
        self.leases.clear()
        self.see("restart")

    # -- this process -------------------------------------------------------------------------
    @rule(key=KEY)
    def read(self, key):
        self.read_and_check(key)

    @rule(key=KEY)
    def peek(self, key):
        """The early hits' read (``peek_after_barrier``): (a) and (c), or nothing."""
        self.read_and_check(key, via="peek")

    def read_until_near_hit(self, key):
        """(scripts only) Read ``key`` until one read is served from the near cache: the
        invalidation of this process's own fill arrives on the stream asynchronously, so
        the next read may still validate; a generous deadline, not a fixed count."""
        deadline = time.monotonic() + 10.0
        while self.seen["near_hit"] == self.near_hits_before and time.monotonic() < deadline:
            self.read_and_check(key)

    def mark_near_hits(self):
        """(scripts only) :meth:`read_until_near_hit` waits for a near hit after this."""
        self.near_hits_before = self.seen["near_hit"]

    @rule(key=KEY, fill_now=st.booleans())
    def read_lookup(self, key, fill_now=True):
        self.read_and_check(key, "lookup")
        if fill_now and key in self.leases:
            self.tracked_fill(key)

    @precondition(lambda self: self.leases)
    @rule(data=st.data())
    def tracked_fill_later(self, data):
        self.tracked_fill(data.draw(st.sampled_from(sorted(self.leases))))

    def tracked_fill(self, key: str) -> None:
        token, versions, loaded = self.leases.pop(key)
        stored = retrying(self.tb.fill, key, token, self.value(key, loaded), TTL, KEYS[key],
                          versions)
        if loaded < self.db[key]:
            assert not stored, f"a fill of {key} loaded before a committed write was stored"
            self.see("stale_fill_refused")

    @rule(key=KEY, mode=MODE)
    def invalidate_here(self, key, mode="key"):
        """This process commits a write (its invalidation drops its entry at once)."""
        self._commit(key, mode, self.tb)

    @rule(key=KEY)
    def near_evict(self, key):
        """The near cache's memory bound drops the entry."""
        with self.near._lock:
            self.near._forget(key)

    # -- parked reads -------------------------------------------------------------------------
    @precondition(lambda self: len(self.parked) < 2)
    @rule(key=KEY, warm=st.booleans())
    def park_read(self, key, warm=True):
        """A read of this process starts in its own thread; it waits at the barrier (if
        the key is held) while the next steps run.  ``warm``: a read first (so that the
        key is held, if it can be)."""
        if warm:
            if self.state(key) is None:
                self._fill_other(key)
            self.read_and_check(key)
        p = Parked(key, self.state(key), self.losses)

        def run():
            self._tl.parked, self._tl.roundtrips = p, 0
            try:
                return retrying(self.tb.get, key, KEYS[key])
            finally:
                p.roundtrips = self._tl.roundtrips
                self._tl.parked = None

        p.future = p.executor.submit(run)
        poll(lambda: p.entered.is_set() or p.future.done(), "the parked read started")
        self.parked.append(p)
        self._quiesce()

    @precondition(lambda self: self.parked)
    @rule(first=st.booleans())
    def finish_parked(self, first=True):
        """(b): everything held is released; the parked read returns a value its key had
        while it ran."""
        p = self.parked.pop(0 if first else -1)
        self._release_all()
        try:
            result = p.future.result(timeout=LONG + DEADLINE)
        finally:
            p.executor.shutdown()
        assert result in p.allowed, (
            f"a parked read of {p.key} returned {result!r}; the key held only "
            f"{sorted(map(repr, p.allowed))} while it ran")
        if p.entered.is_set():
            self.see("parked_barrier_ok" if p.barrier_ok else "parked_barrier_failed")
            if p.barrier_ok and p.roundtrips == 0 and result is not None:
                self.see("parked_near_hit")

    def _quiesce(self) -> None:
        """Wait until every parked read has returned or waits at the barrier again (after
        a release woke it): the next step then races it, not a thread on its way."""
        waiters = self.stream._cond._waiters  # CPython's Condition: one entry per wait()
        poll(lambda: len(waiters) >= sum(1 for p in self.parked if not p.future.done()),
             "parked reads settled")

    @invariant()
    def parked_reads_may_see_the_current_state(self):
        for p in self.parked:
            p.allowed.add(self.state(p.key))

    # -- the tracking connection ---------------------------------------------------------------
    @rule(direction=st.sampled_from([DOWN, DOWN, UP]))
    def hold(self, direction):
        self.proxy.hold(direction)

    @rule(direction=st.sampled_from([DOWN, DOWN, UP]), frames=st.sampled_from([1, 2, None]))
    def release(self, direction, frames=None):
        """Held frames go (the first ``frames``, or all and the direction flows again);
        returns once the stream handled them and the parked reads settled."""
        acked, messages = self.stream._acked, self.stream._messages
        sent = self.proxy.release(direction, frames)
        if direction == DOWN:
            pongs = [int(f.rsplit(b"\r\n", 2)[-2]) for f in sent if b"\r\npong\r\n" in f]
            msgs = sum(1 for f in sent if b"\r\nmessage\r\n" in f)
            if pongs or msgs:
                self.see("released_frames")
            poll(lambda: not self.stream.healthy or (
                self.stream._acked >= max(pongs, default=acked)
                and self.stream._messages >= messages + msgs), "released frames handled")
        elif not self.proxy.holding(DOWN):  # the PINGs reach Redis: wait for their PONGs
            pings = [int(f.rsplit(b"\r\n", 2)[-2]) for f in sent if b"\r\nPING\r\n" in f]
            poll(lambda: not self.stream.healthy or self.stream._acked >= max(pings, default=0),
                 "released PINGs answered")
        self._quiesce()

    @rule(how=st.sampled_from(["restore", "stay", "kill"]))
    def lose_tracking(self, how):
        """The tracking connection is lost: cut by the network (restored at once, or
        later by ``heal``), or killed by Redis.  (c): once noticed, nothing is held."""
        self.losses += 1
        if how == "kill" and not self.proxy.is_cut:
            if not self.stream.healthy:  # a kill needs the connection subscribed
                self._release_all()
                poll(lambda: self.stream.healthy, "tracking re-established")
            self.proxy.refuse()  # no reconnection until the kill is seen
            epoch = self.stream._epoch
            retrying(lambda: self.raw.client_kill_filter(_type="pubsub"))
        else:
            epoch = self.stream._epoch
            self.proxy.cut()
        poll(lambda: self.stream._epoch != epoch and not self.stream.healthy
             and self.near.nbytes == 0 and not self.near._entry_deps,
             "the loss noticed and the near cache emptied")
        self.see("loss_flushed")
        if how != "stay":
            self.proxy.restore()
        self._quiesce()

    @precondition(lambda self: self.proxy.is_cut)
    @rule()
    def heal(self):
        self.proxy.restore()

    @precondition(lambda self: not self.proxy.is_cut)
    @rule()
    def wait_reconnected(self):
        self._release_all()
        poll(lambda: self.stream.healthy, "tracking re-established")
        self.see("reconnected")
        self._quiesce()

    # -- races inside a read ----------------------------------------------------------------
    @rule(key=KEY, mode=MODE, race=st.sampled_from(["write", "loss"]), refill=st.booleans())
    def read_racing_insert(self, key, mode="key", race="write", refill=True):
        """A read of this process takes the validating path and, between its read and
        its insert into the near cache, another process commits a write of the key (its
        message handled before the insert), or the tracking connection is lost and
        re-established with that write during the gap.  The read may return the value
        from before the write (it began before it); the next read must not."""
        with self.near._lock:
            self.near._forget(key)
        if self.state(key) is None:
            self._fill_other(key)
        before = self.state(key)
        ran = []

        def hook():
            ran.append(1)
            if race == "loss":
                self.losses += 1
                self._release_all()
                epoch = self.stream._epoch
                self.proxy.cut()
                poll(lambda: self.stream._epoch != epoch and not self.stream.healthy,
                     "the loss noticed")
            self._commit(key, mode)
            if refill:
                self._fill_other(key)
            if race == "loss":
                self.proxy.restore()
                poll(lambda: self.stream.healthy, "tracking re-established")
            elif self.stream.healthy and not self.proxy.holding(DOWN) \
                    and not self.proxy.holding(UP):
                assert self.real_barrier(LONG)  # the write's message is handled now

        self._put_hook = hook
        self.read_and_check(key, allowed={before, None})
        self._put_hook = None
        if ran:
            self.see(f"insert_raced_by_{race}")
        self.read_and_check(key)
        self.read_and_check(key)

    @rule(key=KEY, mode=MODE, when=st.sampled_from(["before", "after"]))
    def read_racing_barrier(self, key, mode="key", when="before"):
        """Another process commits a write of ``key`` while this process's read is at
        its barrier: before its PING is sent, or just after."""
        if self.state(key) is None:
            self._fill_other(key)
        # now held: the first read may not insert (its own fill's message can land after
        # its mark); read again until the near cache holds it, as a steady reader would
        for _ in range(50):
            self.read_and_check(key)
            if self.stream.barrier(1.0) and self.near.get(key) is not None:
                break
        before = self.state(key)
        ran = []

        def hook(moment):
            if moment == when:
                ran.append(1)
                self._commit(key, mode)

        self._send_hook = hook
        result = self.read_and_check(key, allowed={before, None})
        self._send_hook = None
        if ran:
            self.see(f"barrier_raced_{when}")
            if when == "before":  # its PING was sent after the write was acknowledged
                assert result == self.state(key), (
                    f"{key}: read {result!r} although its barrier's PING was sent after "
                    f"a write was acknowledged")
        else:
            self._commit(key, mode)
        self.read_and_check(key)

    # -- invariants ---------------------------------------------------------------------------
    @invariant()
    def store_never_older_than_committed(self):
        """(d)."""
        for key in KEYS:
            data = self.state(key)
            if data is not None:
                version = int(data.split(b":")[1])
                assert version == self.db[key], (
                    f"the store holds {data!r}, version {self.db[key]} was committed")

    def teardown(self) -> None:
        try:
            self._release_all()
            self.proxy.restore()
            for p in self.parked:
                try:
                    p.future.result(timeout=LONG + DEADLINE)
                except Exception:  # noqa: BLE001 -- the example already failed
                    pass
                p.executor.shutdown()
            try:
                names = list(self.raw.scan_iter(match=glob_escape(self.prefix) + "*"))
                if names:
                    self.raw.delete(*names)
            except ERRORS:
                pass
        finally:
            self.counts.update(self.seen)
            for closer in (self.tb.close, self.other.close, self.observer.close,
                           self.raw.close, self.proxy.stop):
                closer()


def machine_class(server, counts: Counter):
    return type("TrackingMachine_run", (TrackingMachine,), {"server": server, "counts": counts})


#: events every random run must have produced (or the invariants checked nothing); the
#: rarer ones (a parked read served after a release, a stale lease fill, a peek served) are pinned by
#: SCENARIOS
MUST_HAPPEN = ("near_hit", "near_hit_after_writes", "validated_read", "read_while_held",
               "barrier_ok", "barrier_failed", "insert_refused", "loss_flushed", "reconnected",
               "insert_raced_by_write", "insert_raced_by_loss", "barrier_raced_before",
               "barrier_raced_after", "tracked_leased", "peek_none")  # (peek_hit: SCENARIOS)


def test_tracking_interleavings(private_redis, quiet_tracking_log):
    counts: Counter = Counter()
    run_state_machine_as_test(machine_class(private_redis, counts), settings=SETTINGS)
    missing = [name for name in MUST_HAPPEN if not counts[name]]
    assert not missing, f"never exercised: {missing} ({dict(counts)})"


#: interleavings every run replays through the same machine and invariants
#: (id, steps, events the run must have seen)
SCENARIOS = [
    ("message-delayed", [  # the write's message is held: the read waits, then validates
        ("park_read", {"key": "a"}), ("finish_parked", {}),
        ("hold", {"direction": DOWN}), ("write", {"key": "a", "refill": True}),
        ("read", {"key": "a"}), ("release", {"direction": DOWN}), ("read", {"key": "a"}),
        ("read", {"key": "a"}),
    ], {"near_hit": 1, "barrier_failed": 1, "released_frames": 1}),
    ("message-delayed-early", [  # the same for early hits' read, then the ordinary read
        ("park_read", {"key": "a"}), ("finish_parked", {}), ("peek", {"key": "a"}),
        ("hold", {"direction": DOWN}), ("write", {"key": "a", "refill": True}),
        ("peek", {"key": "a"}), ("read", {"key": "a"}), ("release", {"direction": DOWN}),
        ("peek", {"key": "a"}), ("read", {"key": "a"}), ("mark_near_hits", {}),
        ("read_until_near_hit", {"key": "a"}), ("peek", {"key": "a"}),
    ], {"peek_hit": 2, "peek_none": 1, "barrier_failed": 1}),
    ("group-commit-race", [  # a barrier that began after the PING in flight was sent,
        # a write acknowledged in between: it must not share that PING's PONG
        ("park_read", {"key": "a"}), ("finish_parked", {}), ("read", {"key": "a"}),
        ("hold", {"direction": DOWN}), ("park_read", {"key": "a", "warm": False}),
        ("write", {"key": "a", "refill": True}), ("park_read", {"key": "a", "warm": False}),
        ("release", {"direction": DOWN, "frames": 1}),
        ("finish_parked", {"first": True}), ("finish_parked", {}), ("read", {"key": "a"}),
    ], {"parked_barrier_ok": 2, "parked_near_hit": 1, "released_frames": 1}),
    ("tag-message-delayed", [  # the same through a tag version (b: g1 and g2)
        ("park_read", {"key": "b"}), ("finish_parked", {}),
        ("hold", {"direction": DOWN}), ("park_read", {"key": "b", "warm": False}),
        ("write", {"key": "b", "mode": "tag", "refill": True}),
        ("park_read", {"key": "b", "warm": False}),
        ("release", {"direction": DOWN, "frames": 1}),
        ("release", {"direction": DOWN, "frames": 2}),
        ("finish_parked", {"first": False}), ("finish_parked", {}),
    ], {"parked_barrier_ok": 2, "released_frames": 1}),
    ("ping-delayed", [  # the PING reaches Redis after the write: its PONG after the message
        ("park_read", {"key": "c"}), ("finish_parked", {}),
        ("hold", {"direction": UP}), ("park_read", {"key": "c", "warm": False}),
        ("write", {"key": "c", "refill": True}), ("release", {"direction": UP}),
        ("finish_parked", {}), ("read", {"key": "c"}),
    ], {"parked_barrier_ok": 1}),
    ("lost-while-delayed", [  # messages held, then the connection is lost: all forgotten
        ("park_read", {"key": "a"}), ("park_read", {"key": "b"}),
        ("hold", {"direction": DOWN}), ("write", {"key": "a", "refill": True}),
        ("invalidate_here", {"key": "b", "mode": "tag"}),
        ("lose_tracking", {"how": "restore"}), ("read", {"key": "a"}),
        ("finish_parked", {}), ("finish_parked", {}),
        ("wait_reconnected", {}), ("read", {"key": "a"}), ("read", {"key": "a"}),
    ], {"loss_flushed": 1, "reconnected": 1}),
    ("parked-across-a-kill", [  # a read waiting at the barrier when Redis kills the link
        ("park_read", {"key": "a"}), ("finish_parked", {}), ("hold", {"direction": DOWN}),
        ("park_read", {"key": "a", "warm": False}), ("write", {"key": "a", "refill": True}),
        ("lose_tracking", {"how": "kill"}), ("finish_parked", {}), ("heal", {}),
        ("wait_reconnected", {}), ("read", {"key": "a"}), ("read", {"key": "a"}),
    ], {"loss_flushed": 1, "parked_barrier_failed": 1}),
    ("cut-stays-cut", [  # while cut: never served from the near cache
        ("park_read", {"key": "a"}), ("finish_parked", {}),
        ("lose_tracking", {"how": "stay"}), ("read", {"key": "a"}),
        ("write", {"key": "a", "refill": True}), ("read", {"key": "a"}), ("heal", {}),
        ("wait_reconnected", {}), ("read", {"key": "a"}), ("read", {"key": "a"}),
    ], {"loss_flushed": 1, "near_hit": 1}),
    ("flushall-delayed", [
        ("park_read", {"key": "a"}), ("park_read", {"key": "c"}),
        ("finish_parked", {}), ("finish_parked", {}),
        ("hold", {"direction": DOWN}), ("park_read", {"key": "c", "warm": False}),
        ("flushall", {}), ("read", {"key": "a"}),
        ("release", {"direction": DOWN, "frames": 1}), ("finish_parked", {}),
        ("read", {"key": "a"}), ("read", {"key": "c"}),  # held before: gone with the flush
        ("fill_other", {"key": "a"}), ("mark_near_hits", {}),
        ("read_until_near_hit", {"key": "a"}),
    ], {"barrier_failed": 1, "near_hit": 1}),
    ("insert-raced", [
        ("read_racing_insert", {"key": "a", "race": "write"}),
        ("read_racing_insert", {"key": "b", "mode": "tag", "race": "write"}),
        ("read_racing_insert", {"key": "c", "race": "loss"}),
        ("read_racing_insert", {"key": "b", "mode": "both", "race": "loss"}),
    ], {"insert_raced_by_write": 2, "insert_raced_by_loss": 2, "insert_refused": 4}),
    ("barrier-raced", [
        ("read_racing_barrier", {"key": "a", "when": "before"}),
        ("read_racing_barrier", {"key": "b", "mode": "tag", "when": "after"}),
    ], {"barrier_raced_before": 1, "barrier_raced_after": 1}),
    ("stale-lease-fill", [
        ("read_lookup", {"key": "a", "fill_now": False}), ("write", {"key": "a"}),
        ("tracked_fill", {"key": "a"}), ("read", {"key": "a"}),
        ("read_lookup", {"key": "a"}), ("mark_near_hits", {}),
        ("read_until_near_hit", {"key": "a"}),
    ], {"stale_fill_refused": 1, "near_hit": 1}),
    ("expired-and-restarted", [
        ("park_read", {"key": "a"}), ("finish_parked", {}), ("expire", {"key": "a"}),
        ("read", {"key": "a"}), ("park_read", {"key": "c"}), ("finish_parked", {}),
        ("restart", {"really": True}), ("read", {"key": "c"}), ("wait_reconnected", {}),
        ("read", {"key": "c"}),
    ], {"restart": 1}),
]

INVARIANTS = ("parked_reads_may_see_the_current_state", "store_never_older_than_committed")


@pytest.mark.parametrize("steps,events", [s[1:] for s in SCENARIOS],
                         ids=[s[0] for s in SCENARIOS])
def test_scripted_interleavings(private_redis, quiet_tracking_log, steps, events):
    machine = machine_class(private_redis, Counter())()
    play(machine, [(check, {}) for check in INVARIANTS] + list(steps), INVARIANTS)
    assert_saw(machine.seen, events)
