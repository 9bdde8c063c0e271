"""Read leases: the tracked near cache served with no barrier at all, G2 kept by the writers.

:mod:`.tracking` makes a held value safe to serve after an ordering barrier. A *read
lease* (Gray and Cheriton, SOSP 1989) moves the wait to the writers, which are rare:
while a process holds a valid lease it serves held values with no command, no lock and no
wait; a write does not return until every process holding a lease has acknowledged having
applied its invalidation, or until every such lease has run out.

Keys under the prefix ``P``: ``P x:fence`` (a counter), ``P x:readers`` (reader id ->
lease expiry), ``P x:acks`` (reader id -> the fence it has caught up with) and
``P x:wiped`` (the wipe marker). A reader's tracking connection is named
``ecr-<hash of P>-<id>``.

* :class:`ReadLease` -- the reader side: a keeper thread runs the cycles (``RENEW``, a
  barrier, ``ACK``) every ``L/4``; :meth:`ReadLease.valid` is the hot path (a clock read).
* :class:`LeaseWriter` -- the writer side: after a write, ``FENCE`` and wait for the
  pending readers' acks, at most ``L(1 + e) + m``.

The protocol, the proof of G2, who holds a lease, the faults covered (eviction,
``allkeys-*``, wipes, stalls, forks) and the costs: ``docs/design/read-leases.md``.
The assumption is the one every lease makes: clocks advance at rates within ``e``
(:data:`DRIFT`) of each other and Redis's ``TIME`` does not jump by more than ``m``
(:data:`MARGIN`). ``examcache.near_cache = barrier`` turns leases off.
"""
from __future__ import annotations

import atexit
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable

import redis

from .tracking import InvalidationStream

log = logging.getLogger(__name__)

DRIFT = 0.01  # e: clock rates may differ by this fraction
MARGIN = 0.05  # m: seconds of clock offset/jump allowed
FIRST_POLL, MAX_POLL = 0.0005, 0.02
POLICY_CHECK = 2.0  # seconds between checks of Redis's maxmemory-policy

#: KEYS: readers, fence, wiped, acks; ARGV: id, lease ms, wipe-marker ms. Registers (expiry = TIME
#: + lease) and returns {fence, expiry}; a fence or a registry found absent (a wipe, an
#: eviction, or the first reader ever) sets the wipe marker -- a key holding its own end
#: (ms of Redis's clock) and no TTL, so no eviction policy but ``allkeys-*`` can remove it --
#: for longer than any lease granted before it; a fence re-created drops the old acks
RENEW = r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = now + tonumber(ARGV[2])
local wiped = redis.call('EXISTS', KEYS[1]) == 0  -- the registry itself is gone (evicted)
redis.call('HSET', KEYS[1], ARGV[1], expiry, '_', 0)  -- '_' keeps the hash when none reads
if redis.call('SET', KEYS[2], 0, 'NX') then  -- the fence restarts: old acks mean nothing
  wiped = true
  redis.call('DEL', KEYS[4])
end
if wiped then redis.call('SET', KEYS[3], now + tonumber(ARGV[3])) end
return {tonumber(redis.call('GET', KEYS[2])), expiry}
"""

#: KEYS: acks, readers; ARGV: id, fence, expiry from RENEW. Acknowledges only if the
#: registration RENEW wrote is still there (no wipe, no expiry, no older snapshot since)
ACK = r"""
if tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '-1') ~= tonumber(ARGV[3]) then
  return 0
end
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '-1')
if tonumber(ARGV[2]) > cur then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 1
"""

#: KEYS: acks, fence; ARGV: id. A process holding no lease acknowledges the current fence
IDLE_ACK = r"""
local f = tonumber(redis.call('GET', KEYS[2]) or '-1')
if f > tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '-1') then
  redis.call('HSET', KEYS[1], ARGV[1], f)
end
return f
"""

#: KEYS: fence, readers, acks, wiped. ARGV[1] = 1: take a new fence number (INCR); else
#: ARGV[2] is the fence to check. ARGV[3]: the wipe marker's ms. ARGV[4..]: reader ids that
#: must ack even if not registered (found by CLIENT LIST, or pending since the write's fence).
#: A fence found absent drops the acks (numbers restart below them).
#: Returns {n, wiped recently (1/0), k, the k reader ids found expired (and removed),
#: pending ids...}
FENCE = r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[3])  -- the fence restarts below the old acks: they mean nothing
end
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('SET', KEYS[4], now + tonumber(ARGV[3]))  -- a wipe/eviction (or the first write)
end
local n
if ARGV[1] == '1' then n = redis.call('INCR', KEYS[1]) else n = tonumber(ARGV[2]) end
local wiped = 0
if tonumber(redis.call('GET', KEYS[4]) or '0') > now then wiped = 1 end
local expired, pending = {}, {}
local seen = {}
local readers = redis.call('HGETALL', KEYS[2])
for i = 1, #readers, 2 do
  local id, expiry = readers[i], tonumber(readers[i + 1])
  seen[id] = true
  if id == '_' then
  elseif expiry <= now then
    redis.call('HDEL', KEYS[2], id)
    redis.call('HDEL', KEYS[3], id)
    expired[#expired + 1] = id
  elseif tonumber(redis.call('HGET', KEYS[3], id) or '-1') < n then
    pending[#pending + 1] = id
  end
end
for i = 4, #ARGV do
  local id = ARGV[i]
  if not seen[id] and tonumber(redis.call('HGET', KEYS[3], id) or '-1') < n then
    pending[#pending + 1] = id
  end
end
local out = {n, wiped, #expired}
for _, id in ipairs(expired) do out[#out + 1] = id end
for _, id in ipairs(pending) do out[#out + 1] = id end
return out
"""


def reader_tag(prefix: str) -> str:
    """The part of a reader's connection name that says which prefix it reads."""
    return "ecr-" + hashlib.sha256(prefix.encode()).hexdigest()[:12] + "-"


class LeaseKeys:
    def __init__(self, prefix: str) -> None:
        self.fence, self.readers, self.acks, self.wiped = (
            f"{prefix}x:fence", f"{prefix}x:readers", f"{prefix}x:acks", f"{prefix}x:wiped")


def wipe_marker_ms(lease_ms: int) -> int:
    """How long ``P x:wiped`` lives: longer than any lease granted before the wipe."""
    return int(lease_ms * (1 + DRIFT) + MARGIN * 1000) + 1


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
        self._idle_ack = client.register_script(IDLE_ACK)
        self._fence_changed = False
        self._deadline = 0.0  # monotonic; 0 = no usable lease
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self.cycles = 0
        self.timeouts = 0  # consecutive barriers that timed out on a "healthy" stream
        #: only readers hold leases: none until a read asks for one (:meth:`valid`), and
        #: given up (unregistered) once nothing read for a whole lease
        self.idle = True
        self.used = 0.0  # monotonic time of the last read that asked
        #: set when Redis may evict the registry (``maxmemory-policy allkeys-*``): no leases
        self.disabled: str | None = None
        self.disabled_since = 0.0
        self._policy_checked = -1e9
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="examcache-read-lease",
                                        daemon=True)

    def start(self) -> ReadLease:
        self._thread.start()
        atexit.register(self._unregister)  # a clean exit: writers stop waiting at once
        return self

    def valid(self) -> bool:
        """May a held value be served with no barrier now?  (A read's question: a process
        that asks holds a lease; one that stops asking gives it up.)"""
        now = time.monotonic()
        self.used = now
        if now < self._deadline:
            return self.stream.healthy
        if self.idle and self.disabled is None:  # ask the keeper for a lease
            self.idle = False
            self._wake.set()
        return False

    def held(self) -> bool:
        """Is a lease usable now (for the operators' gauge: not a read)?"""
        return self.stream.healthy and time.monotonic() < self._deadline

    def revoke(self) -> None:
        """Stop serving without a barrier until the next cycle (a loss, a flush)."""
        self._deadline = 0.0
        self._wake.set()

    def notice(self, redis_keys: Iterable[str]) -> None:
        """From the stream's reader: a writer's fence changed -> acknowledge soon."""
        if self.keys.fence in redis_keys:
            self._fence_changed = True
            self._wake.set()

    def _ack_idle(self) -> bool:
        """A process holding no lease acknowledges every fence at once: it serves nothing
        without a barrier until a whole cycle (``RENEW`` after this) has run, so no write
        need wait for it -- not even one that found it by its connection name after a wipe
        (an idle worker, the consumer, leases off under ``allkeys-*``)."""
        self._idle_ack(keys=(self.keys.acks, self.keys.fence), args=(self.id,))
        return True

    def cycle(self) -> bool:
        """Renew, catch up (barrier), acknowledge; True when the lease is usable.

        The acknowledgement is conditional on the registration this cycle wrote: after a
        wipe (or a restore of an older snapshot) the fence restarts, and an ack of the
        fence read before it would claim writes this process never saw."""
        started = time.monotonic()
        lease_ms = int(self.lease * 1000)
        fence, expiry = self._renew(keys=(self.keys.readers, self.keys.fence, self.keys.wiped,
                                          self.keys.acks),
                                    args=(self.id, lease_ms, wipe_marker_ms(lease_ms)))
        if not self.stream.barrier(self.barrier_timeout):
            self.timeouts += 1
            if self.stream.healthy and self.timeouts >= 2:
                # a silent connection (no data, no error): reconnect rather than make
                # every read pay the barrier's timeout until TCP gives up
                log.warning("cache tracking connection unanswered for two barriers; "
                            "reconnecting it")
                self.stream.drop()
                self.timeouts = 0
            return False
        self.timeouts = 0
        if not self._ack(keys=(self.keys.acks, self.keys.readers),
                         args=(self.id, int(fence), int(expiry))):
            return False  # wiped or expired meanwhile: no lease from this cycle
        self._deadline = started + self.lease * (1 - DRIFT) - MARGIN
        self.cycles += 1
        return True

    def _check_policy(self) -> None:
        """Leases need a registry Redis never evicts: under ``maxmemory-policy allkeys-*``
        they are off (one warning); checked at start and every :data:`POLICY_CHECK` s."""
        now = time.monotonic()
        if now - self._policy_checked < POLICY_CHECK:
            return
        self._policy_checked = now
        policy = str(self.client.info("memory").get("maxmemory_policy", ""))
        if policy.startswith("allkeys") and self.disabled is None:
            self.disabled, self.disabled_since = policy, now
            log.warning("cache read leases off: Redis's maxmemory-policy is %s, which may evict "
                        "the lease registry; reads use a barrier each (set a volatile-* policy "
                        "or noeviction to have them)", policy)
        elif not policy.startswith("allkeys") and self.disabled is not None:
            log.warning("cache read leases on again: maxmemory-policy is now %s", policy)
            self.disabled = None

    def settled_off(self) -> bool:
        """Have leases been off here (``allkeys-*``) for longer than any other process can
        take to notice it and let its lease run out?  Then no process holds one: a write
        need not wait (the acks of idle processes may be evicted, too)."""
        return self.disabled is not None and \
            time.monotonic() - self.disabled_since > POLICY_CHECK + self.lease * (1 + DRIFT) \
            + MARGIN

    def _run(self) -> None:
        period = self.lease / 4
        self._try(self._check_policy)  # a warning at start, not at the first read
        while not self._stopped.is_set():
            self._wake.clear()
            if self.idle or self.disabled is not None:
                if self._fence_changed:  # (run here, never during a cycle: serialized)
                    self._fence_changed = False
                    self._try(self._ack_idle)
                    continue
                self._wake.wait(POLICY_CHECK)
                self._try(self._check_policy)
                continue
            if time.monotonic() - self.used > self.lease:  # nothing read for a lease
                self._go_idle()
                continue
            self._try(self._check_policy)
            if self.disabled is not None:
                self._go_idle()
                continue
            if not self._try(self.cycle):
                self._deadline = 0.0
            self._wake.wait(period)

    def _try(self, step) -> bool:
        try:
            return bool(step())
        except (redis.RedisError, OSError, ValueError, TypeError) as exc:
            self._deadline = 0.0
            log.debug("cache read lease not renewed (%s)", exc)
            return False

    def _go_idle(self) -> None:
        """Hold no lease (writers stop waiting for this process) until a read asks again."""
        self._deadline = 0.0
        self.idle = True
        self._unregister()

    def _unregister(self) -> None:
        self._deadline = 0.0
        if os.getpid() != self._pid:  # (an atexit hook a forked child inherited)
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.hdel(self.keys.readers, self.id)
            pipe.hdel(self.keys.acks, self.id)
            pipe.execute()
        except (redis.RedisError, OSError):
            pass  # it expires

    def stop(self) -> None:
        """Stop renewing and unregister (writers stop waiting for this process)."""
        self._stopped.set()
        self._deadline = 0.0
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self._unregister()
        atexit.unregister(self._unregister)


class LeaseWriter:
    """The writer side: :meth:`wait` after a write's changes were acknowledged by Redis."""

    def __init__(self, client: redis.Redis, prefix: str, lease_ms: int,
                 own: Callable[[], bool] | None = None, own_id: str | None = None,
                 off: Callable[[], bool] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.client = client
        self.keys = LeaseKeys(prefix)
        self.tag = reader_tag(prefix)
        self.limit = lease_ms / 1000 * (1 + DRIFT) + MARGIN
        self.marker_ms = wipe_marker_ms(lease_ms)
        self.own, self.own_id, self.off = own, own_id, off
        self._fence = client.register_script(FENCE)
        self._clock, self._sleep = clock, sleep
        self.waits = 0  # writes that had to wait for another reader
        self.gave_up = 0  # writes that returned on the time limit
        #: ``incr(name)``: the policy's counters (``lease_waits``, ``lease_timeouts``)
        self.incr: Callable[[str], None] | None = None

    def _count(self, name: str) -> None:
        if name == "lease_waits":
            self.waits += 1
        else:
            self.gave_up += 1
        if self.incr is not None:
            self.incr(name)

    def _listed(self) -> list[str]:
        """Reader ids of this prefix connected now (their registration may be wiped)."""
        out = []
        for client in self.client.client_list(_type="pubsub"):
            name = client.get("name") or ""
            if name.startswith(self.tag):
                out.append(name[len(self.tag):])
        return out

    def _pending(self, ids) -> list[str]:
        """Reader ids still to hear from (decoded, once each), without this process when its
        own stream has caught up."""
        out = list(dict.fromkeys(i.decode() if isinstance(i, bytes) else i for i in ids))
        if self.own_id in out and self.own is not None and self.own():
            out.remove(self.own_id)
        return out

    def wait(self) -> None:
        """Return once no reader can still serve what the caller's write changed."""
        if self.off is not None and self.off():
            return
        started = self._clock()
        deadline = started + self.limit
        try:
            keys = (self.keys.fence, self.keys.readers, self.keys.acks, self.keys.wiped)
            n, wiped, k, *rest = self._fence(keys=keys, args=(1, 0, self.marker_ms))
            # a wipe less than a lease ago (or the first write ever): ask CLIENT LIST too
            pending = self._pending([*rest[k:], *(self._listed() if wiped else [])])
            if not pending:
                return
            self._count("lease_waits")
            delay = FIRST_POLL
            expired_counted = False
            while pending:
                now = self._clock()
                if now >= deadline:
                    if not expired_counted:
                        self._count("lease_timeouts")
                    log.warning("cache read leases: reader(s) %s did not acknowledge a write "
                                "within %.2f s (killed, partitioned or stalled); their leases "
                                "have run out", ", ".join(pending)[:200], self.limit)
                    return
                self._sleep(min(delay, deadline - now))
                delay = min(delay * 2, MAX_POLL)
                # every reader still pending is asked for by id: one whose registration
                # vanishes meanwhile (a wipe, an eviction) is waited for all the same
                _, _, expired, *left = self._fence(keys=keys,
                                                   args=(0, n, self.marker_ms, *pending))
                if expired and not expired_counted:  # a reader never acknowledged: its
                    self._count("lease_timeouts")     # lease ran out
                    log.warning("cache read leases: a reader did not acknowledge a write and "
                                "its lease ran out (killed without closing, partitioned or "
                                "stalled)")
                    expired_counted = True
                pending = self._pending(left[expired:])
        except (redis.RedisError, OSError) as exc:
            # cannot learn who caught up: wait until every lease granted before the write
            # has run out (safe whatever Redis says)
            log.warning("cache read leases: cannot confirm readers caught up (%s); waiting "
                        "out their leases", exc)
            self._count("lease_timeouts")
            left = deadline - self._clock()
            if left > 0:
                self._sleep(left)


def new_reader_id() -> str:
    return os.urandom(8).hex()
