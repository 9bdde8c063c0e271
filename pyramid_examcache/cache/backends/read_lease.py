"""Read leases: the tracked near cache served with no barrier at all, G2 kept by the writers.

:mod:`.tracking` makes a held value safe to serve after an ordering barrier: one ``PING``
on the tracking connection that every request in flight shares. Under load that is still a
wait per request (a thread switch, a wake-up, a round trip's latency). A *read lease*
(Gray and Cheriton, "Leases: an efficient fault-tolerant mechanism for distributed file
cache consistency", SOSP 1989) moves the wait to the writers, which are rare: while a
process holds a valid lease it serves held values with no command, no lock and no wait;
a write does not return until every process holding a lease has acknowledged having
applied its invalidation, or until every such lease has run out.

Hand-written because no library does it: redis-py's client-side cache (redis-py >= 5,
RESP3, Redis >= 7.4) has no ordering guarantee and no writer side at all.

The protocol
------------
Keys under the prefix ``P`` (never a cache key: those are ``P v:``, ``P l:``, ``P t:``):
``P x:fence`` (a counter), ``P x:readers`` (hash: reader id -> lease expiry, ms of Redis's
clock) and ``P x:acks`` (hash: reader id -> the fence value it has caught up with). Each
process with a tracking stream is a reader; its tracking connection is named
``ecr-<hash of P>-<id>`` (``CLIENT LIST`` finds readers whose registration was wiped).

A reader's *cycle* (every ``L/4``, and at once when it sees ``P x:fence`` change or a
flush): ``t0 = now()``; ``RENEW``: atomically ``readers[id] = TIME + L`` and read the fence
``f`` (created if absent); then a barrier on its tracking stream (a ``PING`` sent after
``RENEW`` returned); then its lease is usable until ``t0 + L(1 - e) - m`` on its own
monotonic clock, and it records ``acks[id] = f``. It serves without a barrier only while
that deadline has not passed *and* its stream is healthy; a loss, a reconnection or a
flush message revokes the lease at once.

A writer, after its ``DEL``/version changes were acknowledged: ``FENCE`` atomically does
``n = INCR fence`` and lists the registered readers whose expiry has not passed and whose
ack is below ``n`` (expired ones are removed); its own process is crossed off by a barrier
on its own stream. It polls that list until it is empty, and returns at the latest
``L(1 + e) + m`` after it sent ``FENCE`` (by its own clock), whatever Redis says.

Why a read never sees older data than a write whose response returned (G2)
--------------------------------------------------------------------------
Let W's write change key ``k`` at time ``T_k``, then W's ``FENCE`` run at ``T_f > T_k``
giving ``n``, and let a request R in process P start after W returned and serve P's held
entry for ``k`` without a barrier: P held a lease from some cycle C (``RENEW`` executed at
``T_r``, barrier answered after it). Three cases:

1. ``T_r > T_f``: C's barrier was a PING sent after ``T_r`` on P's tracking connection, so
   (:mod:`.tracking`, claim 1-3) every invalidation message of a change before ``T_r`` --
   ``k``'s among them -- was applied before C made the lease usable, i.e. before R started.
   The entry was dropped; anything held now was filled from a read that the tracked near
   cache's tokens prove newer (:mod:`.tracked_near`).
2. ``T_r < T_f`` and W returned because P's ack reached ``a >= n``: the ack was written
   after the barrier of a cycle whose ``RENEW`` read ``a``, i.e. ran after ``INCR`` made
   ``n``, after ``T_k``; so ``k``'s message was applied before the ack, before W returned,
   before R started.
3. ``T_r < T_f`` and W returned without P's ack: either W saw P's registration expired (by
   Redis's clock, at least ``L`` after ``T_r``: a lease from C ends at ``t0 + L(1-e) - m``
   by P's clock, before that, given clock rates within ``e`` and offsets within ``m``), or
   W gave up ``L(1+e) + m`` after sending ``FENCE`` (C's ``t0`` was before ``T_r < T_f``,
   so C's lease had ended by then), or P was not registered at ``T_f``: then P's cycle C
   registered after a wipe (see below) or P's registration had expired, and both are the
   cases just covered. So P held no usable lease from C when R started -- contradiction.

So the entry was never served stale. The assumption is the one every lease makes: clocks
advance at rates within ``e`` (1 %) of each other and Redis's ``TIME`` does not jump by
more than ``m`` (50 ms). A process paused for longer than its lease (a stop-the-world GC, a
``SIGSTOP``) checks the deadline when it resumes, before serving.

Wipes. ``FLUSHALL``/``FLUSHDB`` (or a restart without persistence) delete the registry: a
writer that finds the fence absent cannot tell "no reader ever" from "readers whose
registration was wiped", so it also waits for every reader ``CLIENT LIST`` names for this
prefix (each re-registers and acknowledges as soon as it sees the flush). A reader that was
partitioned at that moment *and* whose connection Redis had already closed is invisible to
both; it may serve for the rest of its lease (at most ``L``). That triple fault is the one
case this module does not cover; ``examcache.tracking_lease_ms = 0`` turns leases off (a
barrier per read, :mod:`.tracking`).

Changes that are not the application's writes -- an operator's ``FLUSHALL``, an eviction, an
expiry set by hand -- have no writer waiting for them: a reader applies them when their
message lands (usually well under a millisecond). What it served meanwhile was not stale
(the data it stands for did not change), only not yet evicted.

Costs: a held value is served with one clock read and a dict lookup. A reader spends
three small commands per ``L/4`` and per burst of writes; a write waits for the slowest
reader's acknowledgement (about three round trips), at most ``L(1 + e) + m`` when a reader
stopped answering -- a process killed without closing its backend delays writes once, by
up to ``L``.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from typing import Callable, Iterable

import redis

from .tracking import InvalidationStream

log = logging.getLogger(__name__)

DRIFT = 0.01  # e: clock rates may differ by this fraction
MARGIN = 0.05  # m: seconds of clock offset/jump allowed
FIRST_POLL, MAX_POLL = 0.0005, 0.02

RENEW = r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], now + tonumber(ARGV[2]))
redis.call('SET', KEYS[2], 0, 'NX')
return redis.call('GET', KEYS[2])
"""

ACK = r"""
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '-1')
if tonumber(ARGV[2]) > cur then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 1
"""

#: ARGV[1] = 1: take a new fence number (INCR); else ARGV[2] is the fence to check.
#: ARGV[3..]: reader ids that must ack even if not registered (found by CLIENT LIST).
#: Returns {n, existed, pending ids...}
FENCE = r"""
local existed = redis.call('EXISTS', KEYS[1])
local n
if ARGV[1] == '1' then n = redis.call('INCR', KEYS[1]) else n = tonumber(ARGV[2]) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {n, existed}
local seen = {}
local readers = redis.call('HGETALL', KEYS[2])
for i = 1, #readers, 2 do
  local id, expiry = readers[i], tonumber(readers[i + 1])
  seen[id] = true
  if expiry <= now then
    redis.call('HDEL', KEYS[2], id)
    redis.call('HDEL', KEYS[3], id)
  elseif tonumber(redis.call('HGET', KEYS[3], id) or '-1') < n then
    out[#out + 1] = id
  end
end
for i = 3, #ARGV do
  local id = ARGV[i]
  if not seen[id] and tonumber(redis.call('HGET', KEYS[3], id) or '-1') < n then
    out[#out + 1] = id
  end
end
return out
"""


def reader_tag(prefix: str) -> str:
    """The part of a reader's connection name that says which prefix it reads."""
    return "ecr-" + hashlib.sha256(prefix.encode()).hexdigest()[:12] + "-"


class LeaseKeys:
    def __init__(self, prefix: str) -> None:
        self.fence, self.readers, self.acks = (f"{prefix}x:fence", f"{prefix}x:readers",
                                               f"{prefix}x:acks")


class ReadLease:
    """This process's read lease (the reader side): :meth:`valid` on the hot path, a keeper
    thread running the cycles. ``client``: a ``redis.Redis`` for the side commands (short
    timeouts); ``stream``: the process's tracking stream, whose connection must be named
    ``reader_tag(prefix) + reader_id``."""

    def __init__(self, client: redis.Redis, stream: InvalidationStream, prefix: str,
                 reader_id: str, lease_ms: int, barrier_timeout: float) -> None:
        self.client, self.stream, self.id = client, stream, reader_id
        self.keys = LeaseKeys(prefix)
        self.lease = lease_ms / 1000
        self.barrier_timeout = barrier_timeout
        self._renew = client.register_script(RENEW)
        self._ack = client.register_script(ACK)
        self._deadline = 0.0  # monotonic; 0 = no usable lease
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self.cycles = 0
        self._thread = threading.Thread(target=self._run, name="examcache-read-lease",
                                        daemon=True)

    def start(self) -> "ReadLease":
        self._thread.start()
        return self

    def valid(self) -> bool:
        """May a held value be served with no barrier now?"""
        return self.stream._healthy and time.monotonic() < self._deadline

    def revoke(self) -> None:
        """Stop serving without a barrier until the next cycle (a loss, a flush)."""
        self._deadline = 0.0
        self._wake.set()

    def notice(self, redis_keys: Iterable[str]) -> None:
        """From the stream's reader: a writer's fence changed -> acknowledge soon."""
        if self.keys.fence in redis_keys:
            self._wake.set()

    def cycle(self) -> bool:
        """Renew, catch up (barrier), acknowledge; True when the lease is usable."""
        started = time.monotonic()
        fence = self._renew(keys=(self.keys.readers, self.keys.fence),
                            args=(self.id, int(self.lease * 1000)))
        if not self.stream.barrier(self.barrier_timeout):
            return False
        self._deadline = started + self.lease * (1 - DRIFT) - MARGIN
        self._ack(keys=(self.keys.acks,), args=(self.id, int(fence)))
        self.cycles += 1
        return True

    def _run(self) -> None:
        period = self.lease / 4
        while not self._stopped.is_set():
            self._wake.clear()
            try:
                if not self.cycle():
                    self._deadline = 0.0
            except (redis.RedisError, OSError, ValueError, TypeError) as exc:
                self._deadline = 0.0
                log.debug("cache read lease not renewed (%s)", exc)
            self._wake.wait(period)

    def stop(self) -> None:
        """Stop renewing and unregister (writers stop waiting for this process)."""
        self._stopped.set()
        self._deadline = 0.0
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(5)
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.hdel(self.keys.readers, self.id)
            pipe.hdel(self.keys.acks, self.id)
            pipe.execute()
        except (redis.RedisError, OSError):
            pass  # it expires


class LeaseWriter:
    """The writer side: :meth:`wait` after a write's changes were acknowledged by Redis."""

    def __init__(self, client: redis.Redis, prefix: str, lease_ms: int,
                 own: Callable[[], bool] | None = None, own_id: str | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.client = client
        self.keys = LeaseKeys(prefix)
        self.tag = reader_tag(prefix)
        self.limit = lease_ms / 1000 * (1 + DRIFT) + MARGIN
        self.own, self.own_id = own, own_id
        self._fence = client.register_script(FENCE)
        self._clock, self._sleep = clock, sleep
        self.waits = 0  # writes that had to wait for another reader
        self.gave_up = 0  # writes that returned on the time limit

    def _listed(self) -> list[str]:
        """Reader ids of this prefix connected now (their registration may be wiped)."""
        out = []
        for client in self.client.client_list(_type="pubsub"):
            name = client.get("name") or ""
            if name.startswith(self.tag):
                out.append(name[len(self.tag):])
        return out

    def wait(self) -> None:
        """Return once no reader can still serve what the caller's write changed."""
        started = self._clock()
        deadline = started + self.limit
        try:
            n, existed, *pending = self._fence(
                keys=(self.keys.fence, self.keys.readers, self.keys.acks), args=(1, 0))
            extra: list[str] = []
            if not existed:  # a wipe (or the first write ever): ask CLIENT LIST too
                extra = self._listed()
                pending = [*pending, *extra]
            pending = [p.decode() if isinstance(p, bytes) else p for p in pending]
            if self.own_id in pending and self.own is not None and self.own():
                pending.remove(self.own_id)
                extra = [e for e in extra if e != self.own_id]
            if not pending:
                return
            self.waits += 1
            delay = FIRST_POLL
            while True:
                now = self._clock()
                if now >= deadline:
                    self.gave_up += 1
                    return
                self._sleep(min(delay, deadline - now))
                delay = min(delay * 2, MAX_POLL)
                _, _, *left = self._fence(
                    keys=(self.keys.fence, self.keys.readers, self.keys.acks),
                    args=(0, n, *extra))
                left = [p.decode() if isinstance(p, bytes) else p for p in left]
                if self.own_id in left and self.own is not None and self.own():
                    left.remove(self.own_id)
                if not left:
                    return
        except (redis.RedisError, OSError) as exc:
            # cannot learn who caught up: wait until every lease granted before the write
            # has run out (safe whatever Redis says)
            log.warning("cache read leases: cannot confirm readers caught up (%s); waiting "
                        "out their leases", exc)
            self.gave_up += 1
            left = deadline - self._clock()
            if left > 0:
                self._sleep(left)


def new_reader_id() -> str:
    return os.urandom(8).hex()
