"""The stateful property test of issue 6, extended to read leases (issue 11's new path).

Process R under test -- a :class:`RedisBackend` with tracking and read leases, whose
*tracking connection* goes through a :class:`~.proxy.RespProxy` (its data and lease
connections go straight to Redis: R is partitioned on one connection only) -- serves held
values with no barrier while its lease is valid. Process W (leases on, no tracking of its
own) commits writes: each invalidates a key, one of its tags, or both, then refills the
key with the next version. Hypothesis interleaves, in any order:

* W's writes, inline or in the background (a write whose return the machine does not wait
  for: it may stay blocked while R cannot acknowledge, and complete steps later);
* R's reads (``peek_local``, what the early-hit tween serves, then ``get``: a held value
  without a barrier under a valid lease, otherwise a barrier or the validating read) and
  warm-ups (reads until the value is held);
* R's tracking connection: its frames held (messages and PONGs delayed: R can neither see
  invalidations nor renew), released (all, or the first one or two), cut and restored, or
  killed by Redis; ``FLUSHALL`` (the lease registry is wiped with everything else);
* Redis faults on the write path: W's connection closed by Redis just before a write
  (``CLIENT KILL``, as an idle ``timeout`` does: the ``DEL`` is retried at once on a fresh
  connection); a stall (``DEBUG SLEEP``, ``CLIENT PAUSE WRITE``, shorter than the lease
  limit) that a write with short timeouts (writer WS) runs into before its ``DEL`` or its
  fence, while reads go on in a thread; the lease registry (``x:readers``, ``x:acks``,
  ``x:fence``, ``x:wiped``) partly deleted, as an eviction would, also just before a write
  that a second reader R1 re-registers for (a registry re-created without the wipe marker
  would let W skip R).

Checked on every read (G2): a read of R that starts after W's write of a key *returned*
never sees a version of that key older than the write; and every write returns (within
its lease bound, once frames are released: never hangs). The lease is 200 ms, so a write
blocked by a partitioned R costs at most ~0.25 s.
"""
from __future__ import annotations

import concurrent.futures
import shutil
import threading
import time
import uuid
from collections import Counter
from unittest import mock

import pytest
import redis
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test

from pyramid_examcache.cache.backends import tracked_near
from pyramid_examcache.cache.backends.base import Status
from pyramid_examcache.cache.backends.read_lease import LeaseKeys
from pyramid_examcache.cache.backends.redis import RedisBackend

from ..polling import wait_until
from .proxy import DOWN, RespProxy
from .stateful import KEYS, MODE, DebugRedis, Stall, derandomized, targets

KEY = st.sampled_from(sorted(KEYS))
LEASE_MS = 200
WRITE_BOUND = 10.0  # a write that has not returned after this long is a failure
ERRORS = RedisBackend.errors

SETTINGS = derandomized("EXAMCACHE_LEASE_EXAMPLES", 40, 30)
W_NAME = "ecw-machine"  # W's connections, for CLIENT KILL
#: a stall shorter than the lease limit (0.252 s): a write caught in it is waited out, with
#: room to spare for a busy machine; longer than WS's socket timeout, so WS's commands fail
STALL_MS = 120
#: what the machine deletes of the lease registry together (an eviction: none can take it,
#: it has no TTL, but a lost ``x:readers`` or ``x:fence`` sets the wipe marker). Left out,
#: as the protocol does not survive them: the fence without its acks (new fence numbers
#: below the old acks), the marker alone (a wipe's marker cut short)
LOSSES = [("readers",), ("acks",), ("fence",), ("readers", "acks"), ("readers", "wiped"),
          ("fence", "acks"), ("readers", "acks", "wiped"), ("fence", "readers", "acks", "wiped")]


def version_of(value: bytes | None) -> int | None:
    return None if value is None else int(value.split(b":")[1])


class LeaseMachine(RuleBasedStateMachine):
    server = None
    counts: Counter = Counter()

    def __init__(self) -> None:
        super().__init__()
        self.prefix = f"rls:{uuid.uuid4().hex[:10]}:"
        self.version = 0
        self.returned = {k: 0 for k in KEYS}  # newest version of each key whose write returned
        self.committed = {k: 0 for k in KEYS}  # the "database": newest committed version
        self.lock = threading.Lock()
        self.pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="write")
        self.pending: list[concurrent.futures.Future] = []
        self.proxy = RespProxy("127.0.0.1", self.server.port).start()
        real_stream = tracked_near.InvalidationStream

        def stream(kwargs, prefix, on_keys, on_flush, **kw):  # R's tracking connection
            return real_stream({**kwargs, "port": self.proxy.port}, prefix, on_keys, on_flush,
                               reconnect_delay=0.005, **kw)

        def direct(kwargs, prefix, on_keys, on_flush, **kw):  # R1's: straight to Redis
            return real_stream(kwargs, prefix, on_keys, on_flush, reconnect_delay=0.005, **kw)

        url = self.server.url
        with mock.patch.object(tracked_near, "InvalidationStream", stream):
            self.r = RedisBackend(url, prefix=self.prefix, socket_timeout=0.05,
                                  near_cache_bytes=1 << 20, tracking=True, lease_ms=LEASE_MS)
        with mock.patch.object(tracked_near, "InvalidationStream", direct):  # a 2nd reader
            self.r1 = RedisBackend(url, prefix=self.prefix, socket_timeout=0.25,
                                   near_cache_bytes=1 << 20, tracking=True, lease_ms=LEASE_MS)
        self.w = RedisBackend(f"{url}?client_name={W_NAME}", prefix=self.prefix,
                              socket_timeout=1.0, lease_ms=LEASE_MS)
        #: a writer with short timeouts: its commands fail in a stall
        self.ws = RedisBackend(url, prefix=self.prefix, socket_timeout=0.05, lease_ms=LEASE_MS)
        self.keys = LeaseKeys(self.prefix)
        self.raw = redis.Redis(port=self.server.port)
        assert self.r._stream.wait_healthy(5)
        deadline = time.monotonic() + 5
        while not self.r._lease.valid():
            assert time.monotonic() < deadline, "no lease"
            time.sleep(0.001)

    # -- W -----------------------------------------------------------------------------------
    def _load_and_fill(self, key: str) -> None:
        """A cache-aside fill by W: lease, then load from the "database", then fill."""
        token = uuid.uuid4().hex
        found = self.w.lookup(key, token, 5.0, 600, KEYS[key])
        if found.status is Status.LEASED:
            with self.lock:
                current = self.committed[key]
            self.w.fill(key, token, f"{key}:{current}".encode(), 600, KEYS[key], found.versions)

    def _write(self, key: str, mode: str, version: int, writer=None) -> None:
        keys, tags = targets(key, mode)
        try:  # returns once no lease can serve the old value
            (writer or self.w).invalidate(keys, tags)
        except ERRORS as exc:
            raise AssertionError(
                f"W's invalidation of {key} failed ({exc!r}): the policy would defer it, and "
                f"reads may be stale until it lands") from exc
        with self.lock:
            self.returned[key] = max(self.returned[key], version)
        self._load_and_fill(key)

    @rule(key=KEY, mode=MODE, background=st.booleans())
    def write(self, key, mode="key", background=False, writer=None):
        self.version += 1
        with self.lock:
            self.committed[key] = self.version  # the commit, then the invalidation
        if background:
            self.pending.append(self.pool.submit(self._write, key, mode, self.version))
            self.counts["background_write"] += 1
        else:
            started = time.monotonic()
            self._write(key, mode, self.version, writer)
            assert time.monotonic() - started < WRITE_BOUND

    @rule()
    def join_writes(self):
        self.proxy.release(DOWN)
        for future in self.pending:
            future.result(WRITE_BOUND)
        self.pending.clear()

    # -- R -------------------------------------------------------------------------------------
    def _read(self, key: str) -> bytes | None:
        with self.lock:
            floor = self.returned[key]
        lease_valid = self.r._lease.valid()
        held = self.r._tracked.get(key, KEYS[key]) is not None
        early = self.r.peek_local(key, KEYS[key])  # what the early-hit tween would serve
        got = version_of(early)
        assert got is None or got >= floor, (
            f"R's peek_local gave {key} version {got} after the write of version {floor} "
            f"returned")
        if early is not None:
            self.counts["early_hit"] += 1
        try:
            value = self.r.get(key, KEYS[key])
        except ERRORS:
            self.counts["read_error"] += 1
            return None
        got = version_of(value)
        assert got is None or got >= floor, (
            f"R read {key} version {got} after the write of version {floor} returned")
        if lease_valid and held:
            self.counts["lease_hit_candidate"] += 1
        if self.proxy.holding(DOWN):
            self.counts["read_while_partitioned"] += 1
        return value

    @rule(key=KEY)
    def read(self, key):
        self._read(key)

    @rule(key=KEY)
    def warm(self, key):
        """Make sure the key has a value (W fills it if absent), then read until R holds it."""
        self._load_and_fill(key)
        for _ in range(5):
            self._read(key)
            if self.r._tracked.get(key, KEYS[key]) is not None:
                self.counts["held"] += 1
                return

    def _leased(self, key: str) -> None:
        """R holds ``key`` and a valid lease (a process that just asked may still be
        waiting for its first cycle; none while its tracking connection is held or cut)."""
        self.proxy.restore()
        self.proxy.release(DOWN)
        self.warm(key)
        wait_until(lambda: self.r._lease.valid() or (self.warm(key), False)[1], timeout=10,
                   interval=0.001, message="R holding a lease")
        self.counts["leased"] += 1

    @rule(key=KEY, mode=MODE, release_first=st.booleans())
    def write_while_partitioned(self, key, mode="key", release_first=False):
        """The race that matters, in one step: R holds the key under a valid lease, its
        tracking connection goes silent, W writes; a read after the write returned."""
        self.warm(key)
        self.proxy.hold(DOWN)
        self.counts["hold"] += 1
        if release_first:  # a partition that heals during the write
            timer = threading.Timer(0.02, self.proxy.release, (DOWN,))
            timer.start()
        self.write(key, mode)
        self._read(key)
        if release_first:
            timer.join()

    # -- faults --------------------------------------------------------------------------------
    @rule()
    def hold(self):
        self.proxy.hold(DOWN)
        self.counts["hold"] += 1

    @rule(frames=st.sampled_from([1, 2, None]))
    def release(self, frames=None):
        self.proxy.release(DOWN, frames)

    @rule(stay=st.booleans())
    def cut(self, stay):
        self.proxy.cut()
        self.counts["cut"] += 1
        if not stay:
            self.proxy.restore()

    @rule()
    def restore(self):
        self.proxy.restore()

    @rule()
    def kill_tracking(self):
        for c in self.raw.client_list(_type="pubsub"):
            try:
                self.raw.client_kill_filter(_id=c["id"])
            except redis.RedisError:
                pass
        self.counts["kill"] += 1

    @rule(really=st.sampled_from([False, False, False, True]))
    def flushall(self, really=False):
        if not really:
            return
        self.raw.flushall()
        self.counts["flushall"] += 1

    # -- Redis faults on the write path --------------------------------------------------
    @rule(key=KEY, mode=MODE, fault=st.sampled_from(["closed", "stall", "evicted"]),
          kind=st.sampled_from(["sleep", "pause"]), at=st.sampled_from(["del", "fence"]),
          partitioned=st.booleans(), acks=st.booleans())
    def write_under_fault(self, key, mode="key", fault="closed", kind="pause", at="del",
                          partitioned=False, acks=False):
        """A write to a key R holds, under one fault (one rule: each costs up to a lease
        limit, so together they get a rule's share of the steps)."""
        if fault == "closed":
            self.write_on_closed_connection(key, mode)
        elif fault == "stall":
            self.write_during_stall(key, mode, kind, at, partitioned)
        else:
            self.write_after_eviction(key, mode, acks)

    def write_on_closed_connection(self, key, mode="key"):
        """Redis closes W's connection (``CLIENT KILL``; an idle ``timeout``, a proxy or a
        NAT does the same) just before a write to a key R holds: the write is applied and
        waited for, the read after it is fresh."""
        self.warm(key)
        conn = self.w._conns.get().conn  # the connection W's DEL goes out on
        conn.send_command("CLIENT", "ID")
        ids = {int(conn.read_response())}
        if not self.pending:  # and W's pooled ones (a background write may be on its own)
            ids |= {int(c["id"]) for c in self.raw.client_list() if c.get("name") == W_NAME}
        for cid in ids:
            self.raw.client_kill_filter(_id=cid)
        wait_until(lambda: not ids & {int(c["id"]) for c in self.raw.client_list()},
                   timeout=10, interval=0.001, message="W's connections closed")
        self.counts["closed"] += 1
        self.write(key, mode)
        self._read(key)

    def write_during_stall(self, key, mode="key", kind="pause", at="del", partitioned=False):
        """Redis stalls while WS (short timeouts) writes a key R holds -- before its ``DEL``
        or between the ``DEL`` and the fence -- while R reads on in a thread (and R's
        tracking connection is held, or not): WS retries and waits the leases out; every
        read that started after the write returned is fresh."""
        self._leased(key)
        if partitioned:
            self.proxy.hold(DOWN)
            self.counts["hold"] += 1
        reads = Reads(self, key)
        reads.start()
        stall = Stall(self.server.port, kind, STALL_MS)
        writer = self.ws._writer
        if at == "fence":
            real = writer.wait
            writer.wait = lambda: (stall.start(), real())
        else:
            stall.start()
        try:
            self.write(key, mode, writer=self.ws)
        finally:
            writer.__dict__.pop("wait", None)
            stall.join()
        self._read(key)
        reads.stop()
        self.counts[f"stall_{kind}"] += 1

    @rule(lost=st.sampled_from(LOSSES))
    def evict_registry(self, lost):
        """Part of the lease registry is gone, as an eviction would take it (see
        :data:`LOSSES`), also while a background write waits for a partitioned reader (the
        writer keeps asking for it by id)."""
        self.raw.delete(*(getattr(self.keys, name) for name in lost))
        self.counts["evict"] += 1

    def write_after_eviction(self, key, mode="key", acks=False):
        """R holds a key under a lease, its tracking connection goes silent, ``x:readers``
        and ``x:wiped`` (and ``x:acks``) are evicted, R1 re-registers first, then W writes:
        W must still wait for R (the re-created registry sets the wipe marker: W asks
        ``CLIENT LIST``)."""
        self._leased(key)
        self.proxy.hold(DOWN)
        self.counts["hold"] += 1
        lost = [self.keys.readers, self.keys.wiped, *([self.keys.acks] if acks else [])]
        self.raw.delete(*lost)  # (an earlier wipe's marker too: only this loss's counts)
        lease = self.r1._lease
        lease.revoke()  # R1 renews now (R at its next cycle) ...
        wait_until(lambda: self.raw.hexists(self.keys.readers, lease.id) or lease.valid(),
                   timeout=10, interval=0.0005, message="R1 registered again")  # ... asked to
        self.counts["evict_write"] += 1
        self.write(key, mode)
        self._read(key)

    def teardown(self) -> None:
        try:
            self.proxy.restore()
            self.proxy.release(DOWN)
            for future in self.pending:
                future.result(WRITE_BOUND)
        finally:
            self.pool.shutdown(wait=True)
            self.r.close()
            self.r1.close()
            self.w.close()
            self.ws.close()
            self.proxy.stop()
            self.raw.close()


class Reads(threading.Thread):
    """R reads ``key`` over and over (the machine's checked read) until stopped; a stale
    read is raised by :meth:`stop`."""

    def __init__(self, machine: LeaseMachine, key: str) -> None:
        super().__init__(daemon=True)
        self.machine, self.key = machine, key
        self.halt = threading.Event()
        self.failure: AssertionError | None = None

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                self.machine._read(self.key)
            except AssertionError as exc:
                self.failure = exc
                return
            self.machine.counts["stall_read"] += 1
            self.halt.wait(0.005)

    def stop(self) -> None:
        self.halt.set()
        self.join(WRITE_BOUND)
        assert not self.is_alive(), "a read during a stall never returned"
        if self.failure is not None:
            raise self.failure


@pytest.fixture
def debug_redis():
    server = DebugRedis()
    server.start()
    yield server
    server.stop()
    shutil.rmtree(server.dir, ignore_errors=True)


def test_read_lease_interleavings(debug_redis, quiet_tracking_log):
    counts: Counter = Counter()
    machine = type("Machine", (LeaseMachine,), {"server": debug_redis, "counts": counts})
    run_state_machine_as_test(machine, settings=SETTINGS)
    # the interleavings that matter happened (derandomized: the same every run)
    for event in ("background_write", "hold", "read_while_partitioned", "lease_hit_candidate",
                  "early_hit", "cut", "kill", "flushall", "held", "closed", "stall_sleep",
                  "stall_pause", "stall_read", "evict", "evict_write"):
        assert counts[event] > 0, (event, counts)
