"""A stateful property test of the whole cache protocol, on both backends.

Hypothesis drives, in arbitrary interleavings, the steps the policy's
guarantees are about, against the memory backend and against the shared Redis
(a private random key prefix per example, near cache on), each wrapped in a
``FaultyBackend`` that makes store calls fail while a fault is set:

* ``reader(key)``: the next step of a multi-step reader of the key.  Its first
  step runs a real ``CachePolicy.get_or_set`` in its own thread until it
  returns (a hit) or parks in its creator (it holds the lease, or it bypasses);
  the creator reads the model database then; the next step lets the creator
  return what it read, so ``fetch`` fills.  ``reader_as(key, load_later,
  abandon)`` is the same with the variants: the creator reads the database at
  the second step, not the first; or it raises (the lease is released).  Only
  one thread runs at a time (the machine waits until a reader parks or
  returns), so runs are deterministic;
* ``read(key, by)``: a one-step read by this process (``get_or_set`` or
  ``peek``) or by another process (its own ``CachePolicy``, breaker, backend
  object and near cache; the same store; never failing);
* ``commit(key, mode)``: a write commits (the model database's version of the
  key goes up; an uncommitted write is invisible to every actor here, since
  loaders read committed data only, so "write" and "commit" are one step --
  what matters is the window between the commit and its invalidation); its
  after-commit hook (``invalidate_now`` of the key, of a tag of the key, or
  both) runs at once or at a later ``send("hook")``;
* ``send(how)``: ``hook`` (a delayed after-commit hook), ``replay`` (the
  durable log re-sending an invalidation already sent: idempotent), ``flush``
  (``flush_pending()``), ``timer`` (the background retry firing: the clock
  passes ``breaker_reset``, then ``CachePolicy._retry``), ``recover`` (b);
* ``store_down(fault)`` (``"down"``: calls never reach the store; ``"blip"``:
  the next call does not, then the store is up; ``"lost_reply"``: calls are
  applied, then fail like a socket timeout),
  ``store_up()``, ``advance(dt)`` (the fake clock of the policies, the breaker
  and the memory store).

The policy's real retry timer (a wall-clock ``threading.Timer``) is replaced by
a flag, played by ``send("timer")``.  Backend ``wait`` advances the fake clock
instead of sleeping, so ``wait_timeout`` runs out in fake time.  Lease expiry:
the memory store reads the fake clock, so ``advance`` expires its leases (and
``advance(LOCK + 0.01)`` all of them); Redis leases keep their real ``PX`` of
``lock_timeout`` (5 s, never reached during an example), so
``advance(LOCK + 0.01)`` deletes the lease keys, which is what their expiry
does -- smaller advances do not expire Redis leases, and Redis's "bypass"
marks (1 s, real time) outlive fake time: both are behaviours the protocol
must tolerate anyway.

What "acknowledged" means.  A committed write's invalidation is *acknowledged*
when ``invalidate_now`` returned True for it, or when any ``flush_pending()``
(explicit, the background retry's, or the one a read does first) returned True
after it was handed over -- True means the queue was empty or fully applied.
Checked after every step and on every read:

(a) what the store holds for a key (read by a third client without a lease) and
    what another process reads are never older than the last acknowledged
    write of that key; what *this* process reads (``get_or_set``, ``peek``, a
    hit of a multi-step reader at its start) is never older than the last write
    whose invalidation was handed to ``invalidate_now`` at all, acknowledged or
    not (a deferred invalidation is applied before this process reads the cache
    again, G4); and no read returns a version newer than the committed one;
(b) the breaker is never stuck: at any moment, once ``breaker_reset`` passes it
    lets a caller through (closed or half-open, never open with a probe taken);
    ``recover`` (store up, clock past ``breaker_reset``, one ``flush_pending()``)
    must leave nothing deferred and the breaker closed if the flush called the
    store (half-open if there was nothing to apply: the breaker learns on the
    next call), and after one more read, closed;
(c) the breaker's state is the one its documented rules give for the outcomes
    the store actually saw (a reference model fed by the failure-injecting
    wrapper), and it never lets a call through that those rules refuse;
(d) deferred invalidations always have a background retry pending.

``test_scripted_interleavings`` replays fixed interleavings (``SCENARIOS``)
through the same machine and invariants, so that every run covers the races
random runs reach only in most runs, and checks that they happened.
"""
from __future__ import annotations

import os
import threading
import uuid
from collections import Counter

import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from pyramid_examcache.cache import codec
from pyramid_examcache.cache.backends.base import Backend
from pyramid_examcache.cache.backends.memory import MemoryBackend
from pyramid_examcache.cache.backends.redis import RedisBackend, glob_escape
from pyramid_examcache.cache.policy import CachePolicy
from pyramid_examcache.settings import CacheSettings

from ..conftest import REDIS_URL
from .stateful import KEYS, assert_saw, play, targets

#: the keys of random runs: two, sharing tag g1, so that actors meet on a key
#: often ("c", without tags, is in SCENARIOS)
KEY = st.sampled_from(["a", "b"])
#: a flag set one time in four (a hook that runs late matters, but drawn half
#: the time it makes the race of G2 -- a hook that acknowledges while a reader
#: holds a stale load -- rarer)
RARELY = st.sampled_from([False, False, False, True])
RESET = 1.0  # breaker_reset
LOCK = 5.0  # lock_timeout (lease TTL)
WAIT = 0.05  # wait_timeout (fake time: a waiter polls ~8 times)
TTL = 3600
THREAD_TIMEOUT = 10.0

#: 200 examples of up to 40 steps: ~2 s on memory, ~7 s on Redis.  Hypothesis
#: spends much of a stateful budget on near-duplicate and one-rule runs (swarm
#: testing, mutations of what it found), so 100 x 30 is too thin here: one run in
#: five never acknowledged an invalidation through a flush, and a fill that skips
#: the lease check was caught in about half the runs (three in four at 200 x 40).
#: The scripted interleavings below catch it in every run regardless.
SETTINGS = settings(
    max_examples=int(os.environ.get("EXAMCACHE_STATEFUL_EXAMPLES", "200")),
    stateful_step_count=40,
    deadline=None,
    database=None,  # every run explores afresh; a failure prints its steps
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Abandoned(Exception):
    """A reader's creator gave up (the policy must release its lease)."""


class BreakerModel:
    """The breaker's documented rules (pyramid_examcache/breaker.py docstring)."""

    def __init__(self, threshold: int, reset_after: float, clock: FakeClock) -> None:
        self.threshold, self.reset_after, self.clock = threshold, reset_after, clock
        self.failures = 0
        self.opened_at: float | None = None
        self.probing = False

    def allow(self) -> bool:
        if self.opened_at is None:
            return True
        if self.probing or self.clock() - self.opened_at < self.reset_after:
            return False
        self.probing = True
        return True

    def outcome(self, ok: bool) -> None:
        if ok:
            self.failures, self.opened_at, self.probing = 0, None, False
            return
        self.failures += 1
        if self.opened_at is not None or self.failures >= self.threshold:
            self.opened_at = self.clock()  # threshold reached, or a failed probe
        self.probing = False

    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        if self.probing or self.clock() - self.opened_at < self.reset_after:
            return "open"
        return "half-open"


class FaultyBackend(Backend):
    """Delegates to a real backend; while ``fault`` is set every store call
    raises the backend's error type: ``"down"`` before reaching the store,
    ``"lost_reply"`` after the store applied it.  ``wait`` moves the fake clock."""

    def __init__(self, inner: Backend, errors, down_error, lost_error, clock: FakeClock,
                 before=None, after=None) -> None:
        self.inner = inner
        self.errors = errors
        self._down_error, self._lost_error = down_error, lost_error
        self.clock = clock
        self.fault: str | None = None
        self._before, self._after = before, after

    def _do(self, what, fn, *args):
        if self._before is not None:
            self._before(what)
        if self.fault in ("down", "blip"):
            if self.fault == "blip":
                self.fault = None  # one call fails, then the store is back
            self._report(False)
            raise self._down_error(f"injected: store down ({what})")
        result = fn(*args)
        if self.fault == "lost_reply":
            self._report(False)
            raise self._lost_error(f"injected: reply lost ({what})")
        self._report(True)
        return result

    def _report(self, ok: bool) -> None:
        if self._after is not None:
            self._after(ok)

    def lookup(self, key, token, lease_ttl, ttl, tags=()):
        return self._do("lookup", self.inner.lookup, key, token, lease_ttl, ttl, tags)

    def fill(self, key, token, value, ttl, tags=(), versions=()):
        return self._do("fill", self.inner.fill, key, token, value, ttl, tags, versions)

    def release(self, key, token):
        return self._do("release", self.inner.release, key, token)

    def invalidate(self, keys=(), tags=()):
        return self._do("invalidate", self.inner.invalidate, keys, tags)

    def get(self, key, tags=()):
        return self._do("get", self.inner.get, key, tags)

    def clear(self):
        return self._do("clear", self.inner.clear)

    def wait(self, key, timeout):
        self.clock.now += timeout  # fake time passes instead of sleeping

    def close(self):
        self.inner.close()


class Reader:
    """One ``get_or_set`` in its own thread, stopped inside its creator until
    the machine lets it return what it loaded."""

    def __init__(self, policy: CachePolicy, key: str, bound: int) -> None:
        self.policy, self.key, self.bound = policy, key, bound
        self.loaded: int | None = None
        self.abandon = False
        self.creator_called = False
        self.result = None
        self.error: BaseException | None = None
        self._stopped = threading.Event()  # parked in the creator, or returned
        self._go = threading.Event()
        self._done = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"reader-{key}", daemon=True)

    def _creator(self):
        self.creator_called = True
        self._stopped.set()
        if not self._go.wait(THREAD_TIMEOUT):
            raise RuntimeError("reader never released")
        if self.abandon:
            raise Abandoned(self.key)
        return self.loaded

    def _run(self) -> None:
        try:
            self.result = self.policy.get_or_set(self.key, self._creator, TTL, KEYS[self.key])
        except BaseException as exc:  # noqa: BLE001 -- handed to the machine
            self.error = exc
        finally:
            self._done.set()
            self._stopped.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def start(self) -> None:
        self.thread.start()
        assert self._stopped.wait(THREAD_TIMEOUT), "reader neither parked nor returned"

    def finish(self) -> None:
        self._go.set()
        assert self._done.wait(THREAD_TIMEOUT), "reader hung after its creator returned"
        self.thread.join(THREAD_TIMEOUT)


class Writer:
    def __init__(self, key: str, mode: str, version: int) -> None:
        self.key, self.mode, self.version = key, mode, version
        self.sent = 0  # invalidate_now calls made for it


class ProtocolMachine(RuleBasedStateMachine):
    kind = "memory"
    redis_root = "examcache-test:stateful:"
    counts: Counter = Counter()

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.policy: CachePolicy | None = None
        self.readers: dict[str, Reader] = {}  # key -> its parked reader
        self.writers: list[Writer] = []
        self.db = {k: 0 for k in KEYS}  # committed versions
        self.next_version = 1
        self.handed = {k: 0 for k in KEYS}  # last version handed to invalidate_now
        self.acked = {k: 0 for k in KEYS}  # last version whose invalidation was acknowledged
        self.unacked: list[Writer] = []  # handed over, deferred, not acknowledged yet
        self.retry_pending = False
        self.violations: list[str] = []
        self._closers: list = []
        self.seen: Counter = Counter()  # this example's events

    # -- building --------------------------------------------------------------------
    @initialize(threshold=st.integers(1, 3))
    def setup(self, threshold):
        self.model = BreakerModel(threshold, RESET, self.clock)
        cfg = CacheSettings(breaker_threshold=threshold, breaker_reset=RESET, lock_timeout=LOCK,
                            wait_timeout=WAIT, default_ttl=TTL)
        if self.kind == "memory":
            store = MemoryBackend(clock=self.clock)
            inner_a = inner_b = self.observer = store
            errors, down_error, lost_error = (ConnectionError,), ConnectionError, ConnectionError
        else:
            self.prefix = f"{self.redis_root}{uuid.uuid4().hex[:10]}:"
            # Redis itself is healthy here (the faults are the injected ones): a socket
            # timeout no scheduling delay of a busy machine reaches (0.25 s timed out once
            # under a load average of 31, and Hypothesis saw an unrepeatable step)
            inner_a, inner_b, self.observer = (
                RedisBackend(REDIS_URL, prefix=self.prefix, socket_timeout=2.0,
                             near_cache_bytes=near)
                for near in (1 << 20, 1 << 20, 0))
            self.raw = redis.Redis.from_url(REDIS_URL)
            self._closers += [inner_a.close, inner_b.close, self.observer.close, self.raw.close]
            errors, down_error, lost_error = (RedisBackend.errors, redis.ConnectionError,
                                              redis.TimeoutError)
        self.store_a = FaultyBackend(inner_a, errors, down_error, lost_error, self.clock,
                                     before=self._breaker_let_through, after=self.model.outcome)
        self.policy = CachePolicy(self.store_a, cfg, clock=self.clock)
        self.policy._schedule_retry = self._schedule_retry
        real_flush = self.policy.flush_pending

        def flush_pending() -> bool:  # every flush, including a read's and the retry's
            ok = real_flush()
            if ok:
                self._acknowledge(self.unacked, "acked_by_flush")
                self.unacked = []
            return ok

        self.policy.flush_pending = flush_pending
        store_b = FaultyBackend(inner_b, errors, down_error, lost_error, self.clock)
        self.other = CachePolicy(store_b, cfg, clock=self.clock)
        self.other._schedule_retry = lambda: None

    def _schedule_retry(self) -> None:
        self.retry_pending = True

    def _breaker_let_through(self, what: str) -> None:
        if not self.model.allow():
            msg = (f"the breaker let a {what} through that its rules refuse "
                   f"(model: {self.model.state()}, failures={self.model.failures})")
            self.violations.append(msg)
            raise AssertionError(msg)

    def _acknowledge(self, writers, how: str) -> None:
        for w in writers:
            if w.version > self.acked[w.key]:
                self.seen[how] += 1
                self.acked[w.key] = w.version

    def teardown(self) -> None:
        for r in self.readers.values():
            r.abandon = True
            r._go.set()
        for r in self.readers.values():
            r.thread.join(THREAD_TIMEOUT)
        if self.policy is not None:
            stats = self.policy.stats.snapshot()
            self.seen["stale_rejected"] += stats.get("stale_rejected", 0)
            self.seen["errors"] += stats.get("errors", 0)
        self.counts.update(self.seen)
        if self.kind == "redis" and self.policy is not None:
            names = list(self.raw.scan_iter(match=glob_escape(self.prefix) + "*", count=1000))
            if names:
                self.raw.delete(*names)
        for close in self._closers:
            close()

    # -- checks ------------------------------------------------------------------------
    def _check_value(self, who: str, key: str, value, low: int, why: str) -> None:
        assert isinstance(value, int) and not isinstance(value, bool), f"{who}: {value!r}"
        assert value <= self.db[key], (
            f"{who} read {key}={value}, newer than the committed version {self.db[key]}")
        assert value >= low, (
            f"{who} read {key}={value}, but version {low} was committed and its "
            f"invalidation {why}")

    def _check_reader(self, r: Reader) -> None:
        if r.abandon:
            assert isinstance(r.error, Abandoned), f"abandoned reader: {r.error!r}"
            return
        if r.error is not None:
            raise r.error
        if r.creator_called:  # a miss or a bypass: what it loaded, as loaded
            assert r.result == r.loaded, (r.result, r.loaded)
            self._check_value("a reader", r.key, r.result, r.bound,
                              "was handed over before it started")
        else:  # a hit, at its start
            self.seen["reader_hit"] += 1
            if r.bound:
                self.seen["hit_after_invalidation"] += 1
            self._check_value("a reader (hit)", r.key, r.result, r.bound,
                              "was handed to this process before the read")

    # -- readers ------------------------------------------------------------------------
    @rule(key=KEY)
    def reader(self, key):
        """The next step of the multi-step reader of ``key`` (see ``reader_as``)."""
        self.reader_as(key)

    @rule(key=KEY, load_later=st.booleans(), abandon=st.booleans())
    def reader_as(self, key, load_later=False, abandon=False):
        """The next step of the multi-step reader of ``key``.

        No reader parked on ``key``: one starts -- its ``get_or_set`` runs in its
        own thread until it returns (a hit) or parks in its creator (it holds
        the lease, or bypasses); the creator reads the database at once, or,
        ``load_later``, at the reader's next step.  A reader parked and not
        loaded: it loads (reads the database now).  Loaded: its creator returns
        what it loaded and ``fetch`` fills -- or, ``abandon``, raises (``fetch``
        releases the lease)."""
        r = self.readers.get(key)
        if r is None:
            r = Reader(self.policy, key, self.handed[key])
            r.start()
            if r.done:
                self._check_reader(r)
                return
            if not load_later:
                r.loaded = self.db[key]
            self.readers[key] = r
        elif r.loaded is None:
            r.loaded = self.db[key]
        else:
            del self.readers[key]
            r.abandon = abandon
            if r.loaded < self.acked[key] and not abandon:
                self.seen["stale_load_finished_after_ack"] += 1
            r.finish()
            self._check_reader(r)

    @rule(key=KEY, by=st.sampled_from(["this", "peek", "other"]))
    def read(self, key, by="this"):
        """A one-step read: this process's ``get_or_set`` (its creator reads the
        database now), its ``peek`` (no lease, never stores), or another
        process's ``get_or_set`` (same store, its own policy and breaker)."""
        if by == "peek":
            data = self.policy.peek(key, tags=KEYS[key])
            if data is not None:
                self._check_value("peek", key, codec.decode_json(data), self.handed[key],
                                  "was handed to invalidate_now before the peek")
            return
        called = []

        def creator():
            called.append(1)
            return self.db[key]

        if by == "this":
            value = self.policy.get_or_set(key, creator, TTL, KEYS[key])
            if not called and self.handed[key]:
                self.seen["hit_after_invalidation"] += 1
            self._check_value("this process", key, value, self.handed[key],
                              "was handed to invalidate_now before the read")
        else:
            value = self.other.get_or_set(key, creator, TTL, KEYS[key])
            if not called and self.acked[key]:
                self.seen["other_hit_after_ack"] += 1
            self._check_value("another process", key, value, self.acked[key],
                              "was acknowledged before the read")

    # -- writers ------------------------------------------------------------------------
    @rule(key=KEY, mode=st.sampled_from(["key", "tag", "both"]), hook_later=RARELY)
    def commit(self, key, mode="key", hook_later=False):
        """A write of ``key`` commits; its after-commit hook (``invalidate_now``
        of the key, of a tag of the key, or both) runs at once, or, with
        ``hook_later``, at a later ``send("hook")`` (or never: a crash)."""
        w = Writer(key, mode, self.next_version)
        self.next_version += 1
        self.db[key] = w.version
        self.writers.append(w)
        if not hook_later:
            self._invalidate(w)

    def _invalidate(self, w: Writer) -> None:
        keys, tags = targets(w.key, w.mode)
        self.seen["replayed" if w.sent else "after_commit"] += 1
        w.sent += 1
        self.handed[w.key] = max(self.handed[w.key], w.version)
        if self.policy.invalidate_now(keys, tags):
            self._acknowledge([w], "acked_at_once")
        else:
            self.seen["deferred"] += 1
            if w not in self.unacked:
                self.unacked.append(w)

    @rule(how=st.sampled_from(["flush", "timer", "hook", "replay", "recover"]))
    def send(self, how):
        """Invalidations reach the store.  ``hook``: the after-commit hook of the
        latest commit whose hook has not run; ``replay``: the durable log sends
        the latest invalidation already sent again (idempotent); ``flush``:
        ``flush_pending()``; ``timer``: the background retry's timer fires (if
        one is pending): time passes beyond ``breaker_reset``, then
        ``CachePolicy._retry`` (which reschedules itself when its flush fails);
        ``recover``: checks (b)."""
        if how in ("hook", "replay"):
            todo = [w for w in self.writers if bool(w.sent) == (how == "replay")]
            if todo:
                self._invalidate(todo[-1])
        elif how == "flush":
            self.policy.flush_pending()
        elif how == "timer":
            if self.retry_pending:
                self.seen["background_retry"] += 1
                self.clock.now += RESET + 0.05
                self.retry_pending = False  # _retry drops its timer first
                self.policy._retry()
        else:
            self._recover()

    def _recover(self) -> None:
        """(b): the store is up, the clock passes breaker_reset, one flush_pending()."""
        self.store_a.fault = None
        self.clock.now += RESET + 0.01
        had = bool(self.policy.deferred)
        assert self.policy.flush_pending(), "flush_pending() failed with the store up"
        assert not self.policy.deferred, "flush_pending() returned True, invalidations left"
        state = self.policy.breaker.state
        if had:
            self.seen["recovered_deferred"] += 1
            assert state == "closed", f"flush_pending() applied everything, breaker {state}"
        else:  # the flush called nothing: the breaker learns on the next call
            assert state in ("closed", "half-open"), f"breaker {state} with the store up"
        self.read("a", "peek")
        state = self.policy.breaker.state
        assert state == "closed", f"breaker {state} after a successful read"

    # -- failures and time -------------------------------------------------------------
    @rule(fault=st.sampled_from(["down", "blip", "lost_reply"]))
    def store_down(self, fault="down"):
        """The store, as this process sees it, is down (calls do not reach it),
        blips (the next call does not reach it, then it is up), or loses
        replies (calls are applied, then fail like a socket timeout)."""
        self.store_a.fault = fault

    @precondition(lambda self: self.store_a.fault is not None)
    @rule()
    def store_up(self):
        self.store_a.fault = None

    @rule(dt=st.sampled_from([0.25, 0.5, 1.0, 1.5, LOCK + 0.01]))
    def advance(self, dt):
        """Time passes (policy, breaker, memory store).  ``LOCK + 0.01``: every
        lease expires (Redis leases have a real TTL never reached here: their
        keys are deleted, which is what their expiry does)."""
        self.clock.now += dt
        if dt >= LOCK and self.kind == "redis":
            names = list(self.raw.scan_iter(match=glob_escape(self.prefix) + "l:*"))
            if names:
                self.raw.delete(*names)

    # -- invariants --------------------------------------------------------------------------
    @invariant()
    def no_violation_recorded(self):
        assert not self.violations, self.violations

    @invariant()
    def store_never_older_than_acknowledged(self):
        if self.policy is None:
            return
        for key, tags in KEYS.items():
            data = self.observer.get(key, tags)
            if data is not None:
                if self.acked[key]:
                    self.seen["store_checked_after_ack"] += 1
                self._check_value("the store", key, codec.decode_json(data), self.acked[key],
                                  "was acknowledged")

    @invariant()
    def breaker_follows_its_rules(self):
        if self.policy is None:
            return
        state = self.policy.breaker.state
        if state != "closed":
            self.seen[f"breaker_{state}"] += 1
        assert state == self.model.state(), (
            f"breaker {state}, its rules say {self.model.state()} "
            f"(failures={self.model.failures}, threshold={self.model.threshold})")

    @invariant()
    def breaker_never_stuck(self):
        if self.policy is None:
            return
        now = self.clock.now
        try:
            self.clock.now = now + RESET + 0.01
            later = self.policy.breaker.state
        finally:
            self.clock.now = now
        assert later in ("closed", "half-open"), f"breaker still {later} after breaker_reset"

    @invariant()
    def deferred_invalidations_have_a_retry(self):
        if self.policy is not None and self.policy.deferred:
            assert self.retry_pending, "invalidations deferred with no retry scheduled"


#: events every random run must have produced, or the invariants were checked on
#: nothing (each was seen in every one of 90 measured runs, 60 to 1300 times a
#: run on average).  The G2 race itself, another process's hit after an
#: acknowledged invalidation, recover() with something deferred and the
#: background retry are rarer and clumpier (Hypothesis finds one, then mutates
#: it), so they are pinned by SCENARIOS instead of asserted here.
MUST_HAPPEN = ("deferred", "acked_at_once", "acked_by_flush", "store_checked_after_ack",
               "hit_after_invalidation", "reader_hit", "breaker_open", "breaker_half-open")

INVARIANTS = ("no_violation_recorded", "store_never_older_than_acknowledged",
              "breaker_follows_its_rules", "breaker_never_stuck",
              "deferred_invalidations_have_a_retry")


@pytest.fixture
def redis_root():
    root = f"examcache-test:stateful-{uuid.uuid4().hex[:12]}:"
    yield root
    client = redis.Redis.from_url(REDIS_URL)
    names = list(client.scan_iter(match=glob_escape(root) + "*", count=1000))
    if names:
        client.delete(*names)
    client.close()


def machine_class(kind: str, redis_root: str, counts: Counter):
    return type(f"ProtocolMachine_{kind}", (ProtocolMachine,),
                {"kind": kind, "redis_root": redis_root, "counts": counts})


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_protocol_interleavings(kind, redis_root):
    counts: Counter = Counter()
    run_state_machine_as_test(machine_class(kind, redis_root, counts), settings=SETTINGS)
    missing = [name for name in MUST_HAPPEN if not counts[name]]
    assert not missing, f"never exercised: {missing} ({dict(counts)})"


#: interleavings every run replays through the same machine and invariants
#: (id, what it shows, breaker threshold, steps, events the run must have seen)
SCENARIOS = [
    ("g2-key", "loaded before the commit, filled after its invalidation: refused", 3, [
        ("reader", {"key": "a"}), ("commit", {"key": "a"}), ("reader", {"key": "a"}),
        ("read", {"key": "a"}), ("read", {"key": "a", "by": "other"}),
        ("read", {"key": "a"}), ("read", {"key": "a", "by": "other"}),
    ], {"stale_load_finished_after_ack": 1, "stale_rejected": 1, "hit_after_invalidation": 1,
        "other_hit_after_ack": 1}),
    ("g2-tag",
     "the same through a tag (b is stored under g1 and g2; the write deletes g2)", 3, [
        ("reader", {"key": "b"}), ("commit", {"key": "b", "mode": "tag"}),
        ("reader", {"key": "b"}), ("read", {"key": "b", "by": "other"}),
        ("read", {"key": "b", "by": "other"}),
    ], {"stale_load_finished_after_ack": 1, "stale_rejected": 1, "other_hit_after_ack": 1}),
    ("g2-fill-first",
     "loaded before the commit, filled before its invalidation: deleted by it", 3, [
        ("reader", {"key": "c"}), ("commit", {"key": "c", "hook_later": True}),
        ("reader", {"key": "c"}), ("read", {"key": "c", "by": "other"}),
        ("send", {"how": "hook"}), ("read", {"key": "c", "by": "other"}),
        ("read", {"key": "c", "by": "other"}),
    ], {"other_hit_after_ack": 1}),
    ("lease-expired",
     "the lease expired while loading; another reader filled; the stale fill is refused", 3, [
        ("reader", {"key": "a"}), ("advance", {"dt": LOCK + 0.01}),
        ("read", {"key": "a", "by": "other"}), ("commit", {"key": "a"}),
        ("reader", {"key": "a"}), ("read", {"key": "a", "by": "other"}),
    ], {"stale_load_finished_after_ack": 1, "stale_rejected": 1}),
    ("deferred",
     "an invalidation the store missed is applied before this process reads again", 1, [
        ("read", {"key": "a"}), ("store_down", {}), ("commit", {"key": "a"}),
        ("store_up", {}), ("read", {"key": "a"}), ("read", {"key": "a", "by": "other"}),
        ("send", {"how": "timer"}), ("read", {"key": "a", "by": "other"}),
        ("read", {"key": "a", "by": "other"}),
    ], {"deferred": 1, "background_retry": 1, "acked_by_flush": 1, "other_hit_after_ack": 1}),
    ("deferred-read",
     "a read before the retry ran applies the deferred invalidation first", 2, [
        ("read", {"key": "a"}), ("store_down", {}), ("commit", {"key": "a"}),
        ("store_up", {}), ("read", {"key": "a"}), ("read", {"key": "a", "by": "peek"}),
        ("read", {"key": "a"}),
    ], {"deferred": 1, "acked_by_flush": 1, "hit_after_invalidation": 1}),
    ("lost-reply",
     "a lost reply: applied, deferred, applied again; recover() closes the breaker", 2, [
        ("read", {"key": "b"}), ("store_down", {"fault": "lost_reply"}),
        ("commit", {"key": "b", "mode": "both"}), ("send", {"how": "flush"}),
        ("send", {"how": "recover"}), ("send", {"how": "replay"}),
        ("read", {"key": "b"}), ("read", {"key": "b"}),
    ], {"deferred": 1, "recovered_deferred": 1, "acked_by_flush": 1, "replayed": 1,
        "hit_after_invalidation": 1}),
    ("breaker",
     "a successful probe closes the breaker; the next failures count from zero", 3, [
        ("store_down", {}), ("read", {"key": "a"}), ("read", {"key": "a"}),
        ("read", {"key": "a"}), ("advance", {"dt": 1.0}), ("store_up", {}),
        ("read", {"key": "a"}), ("store_down", {}), ("read", {"key": "a"}),
        ("read", {"key": "b"}), ("store_up", {}), ("read", {"key": "a"}),
    ], {"breaker_open": 1, "breaker_half-open": 1}),
]


@pytest.mark.parametrize("kind", ["memory", "redis"])
@pytest.mark.parametrize("name,threshold,steps,events", [s[1:] for s in SCENARIOS],
                         ids=[s[0] for s in SCENARIOS])
def test_scripted_interleavings(kind, name, threshold, steps, events, redis_root):
    machine = machine_class(kind, redis_root, Counter())()
    play(machine, [("setup", {"threshold": threshold}), *steps], INVARIANTS)
    assert_saw(machine.seen, events, f"{name}: ")
