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
  killed by Redis; ``FLUSHALL`` (the lease registry is wiped with everything else).

Checked on every read (G2): a read of R that starts after W's write of a key *returned*
never sees a version of that key older than the write; and every write returns (within
its lease bound, once frames are released: never hangs). The lease is 200 ms, so a write
blocked by a partitioned R costs at most ~0.25 s.
"""
from __future__ import annotations

import concurrent.futures
import threading
import time
import uuid
from collections import Counter
from unittest import mock

import redis
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test

from pyramid_examcache.cache.backends import tracked_near
from pyramid_examcache.cache.backends.base import Status
from pyramid_examcache.cache.backends.redis import RedisBackend

from .proxy import DOWN, RespProxy
from .stateful import KEYS, MODE, derandomized, targets

KEY = st.sampled_from(sorted(KEYS))
LEASE_MS = 200
WRITE_BOUND = 10.0  # a write that has not returned after this long is a failure
ERRORS = RedisBackend.errors

SETTINGS = derandomized("EXAMCACHE_LEASE_EXAMPLES", 40, 30)


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

        url = self.server.url
        with mock.patch.object(tracked_near, "InvalidationStream", stream):
            self.r = RedisBackend(url, prefix=self.prefix, socket_timeout=0.05,
                                  near_cache_bytes=1 << 20, tracking=True, lease_ms=LEASE_MS)
        self.w = RedisBackend(url, prefix=self.prefix, socket_timeout=1.0, lease_ms=LEASE_MS)
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

    def _write(self, key: str, mode: str, version: int) -> None:
        keys, tags = targets(key, mode)
        self.w.invalidate(keys, tags)  # returns once no lease can serve the old value
        with self.lock:
            self.returned[key] = max(self.returned[key], version)
        self._load_and_fill(key)

    @rule(key=KEY, mode=MODE, background=st.booleans())
    def write(self, key, mode="key", background=False):
        self.version += 1
        with self.lock:
            self.committed[key] = self.version  # the commit, then the invalidation
        if background:
            self.pending.append(self.pool.submit(self._write, key, mode, self.version))
            self.counts["background_write"] += 1
        else:
            started = time.monotonic()
            self._write(key, mode, self.version)
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

    def teardown(self) -> None:
        try:
            self.proxy.restore()
            self.proxy.release(DOWN)
            for future in self.pending:
                future.result(WRITE_BOUND)
        finally:
            self.pool.shutdown(wait=True)
            self.r.close()
            self.w.close()
            self.proxy.stop()
            self.raw.close()


def test_read_lease_interleavings(private_redis, quiet_tracking_log):
    counts: Counter = Counter()
    machine = type("Machine", (LeaseMachine,), {"server": private_redis, "counts": counts})
    run_state_machine_as_test(machine, settings=SETTINGS)
    # the interleavings that matter happened (derandomized: the same every run)
    for event in ("background_write", "hold", "read_while_partitioned", "lease_hit_candidate",
                  "early_hit",
                  "cut", "kill", "flushall", "held"):
        assert counts[event] > 0, (event, counts)
