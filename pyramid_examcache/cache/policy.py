"""The cache policy: get-or-set with leases, commit-time invalidation, fail-open.

One :class:`CachePolicy` per application (built by ``includeme``) holds the
backend, the circuit breaker and the counters.  ``request.cache`` is a
:class:`RequestCache`: the same operations bound to the request's transaction.
The full argument is ``docs/design/cache-policy.md``; in short:

No stale sets (G2, docs/design/cache-policy.md): a reader that misses gets a
*lease* (a random token stored beside the key, in the same atomic step that
found the key missing) and the current *versions* of the key's tags; its fill
is stored only if its token still holds the lease and every tag still has the
version it saw.  A writer's invalidation (after its commit) deletes the key's
value, its lease and the versions of its tags, so a fill carrying data read
before the commit is refused.  Tag versions are random strings, never
counters: a lost or expired version invalidates, never resurrects.  Leases
expire (``lock_timeout``): a killed loader leaves no stuck key.

One load per cold key (G3, same page): only the lease holder loads; the others
poll (2 ms doubling to 10 ms; the memory backend wakes them on fill) until the
value lands, up to ``wait_timeout``, then load themselves and do not store.

Fail open (G4, same page): backend errors are never raised to the caller; the
creator is called and its result returned.  A circuit breaker stops paying the
socket timeout on every request; invalidations that fail are kept and applied
before this process reads the cache again.

Keys and tags of the public API may not start with ``@`` (the cached views'
namespace, :mod:`.variants`); invalidating ``<key>`` also invalidates the tag
``@key:<key>`` that every view variant of it carries.  A value larger than
``examcache.max_value_bytes`` is returned but not stored.  ``RequestCache``
neither reads nor stores while the request's transaction has written: the
request sees its own writes and nothing uncommitted reaches the cache.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ..breaker import Breaker, BreakerOpen
from ..settings import CacheSettings
from ..trace import trace_of
from ..transaction import CacheWork, request_bridge
from . import codec
from .backends.base import SEP, Backend, Status
from .deferred import DeferredInvalidations
from .stats import Stats
from .variants import RESERVED, key_tag

log = logging.getLogger(__name__)

MAX_KEY_LENGTH = 1024
_FIRST_POLL = 0.002
_MAX_POLL = 0.01


def check_key(key: str, what: str = "key", internal: bool = False) -> str:
    """``key`` if it may be used; ValueError else.  Keys and tags of the public
    API may not start with ``@``: that namespace holds the cached views' entries
    and their implicit tags (:mod:`.variants`)."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"cache {what} must be a non-empty string, got {key!r}")
    if len(key) > MAX_KEY_LENGTH or SEP in key or "\n" in key:
        raise ValueError(f"cache {what} too long or contains control characters: {key[:80]!r}")
    if not internal and key.startswith(RESERVED):
        raise ValueError(f"cache {what} {key[:80]!r}: names starting with {RESERVED!r} are "
                         f"reserved for cached views' entries")
    return key


def check_ttl(ttl: Any) -> int:
    """``ttl`` if it is a positive int (seconds); ValueError else."""
    if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl <= 0:
        raise ValueError(f"cache ttl must be a positive int (seconds), got {ttl!r}")
    return ttl


def _as_tuple(tags: Iterable[str] | str, internal: bool = False) -> tuple[str, ...]:
    if isinstance(tags, str):
        tags = (tags,)
    return tuple(check_key(t, "tag", internal) for t in tags)


_FAILED = object()  # what _call returns when the backend could not be used
#: invalidations are sent in chunks of this many keys (or tags): one DEL each,
#: so a bulk edit never becomes one command too big for the socket timeout
CHUNK = 256


class CachePolicy:
    """Application-wide cache front end.  Thread-safe; build one per app."""

    def __init__(self, backend: Backend, settings: CacheSettings | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.backend = backend
        self.settings = settings or CacheSettings()
        self._errors = backend.errors or (Exception,)
        self.breaker = Breaker(self.settings.breaker_threshold, self.settings.breaker_reset,
                               errors=self._errors, clock=clock)
        self.deferred = DeferredInvalidations()
        self.stats = Stats()
        backend.attach_stats(self.stats.incr)
        #: the durable invalidation log, when this policy has one (see ``includeme``)
        self.journal = None
        self._clock = clock
        self._apply_lock = threading.Lock()
        self._retry_lock = threading.Lock()
        self._retry_timer: threading.Timer | None = None

    # -- every backend call goes through the breaker ------------------------------
    def _call(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` through the breaker; ``_FAILED`` when the backend is open,
        failing or slow (never raises for those: fail open)."""
        try:
            return self.breaker.call(fn, *args)
        except BreakerOpen:
            return _FAILED
        except self._errors as exc:
            self.stats.incr("errors")
            log.warning("cache backend failed during %s (%s: %s); serving without the cache",
                        what, type(exc).__name__, exc)
            return _FAILED

    def _ready(self) -> bool:
        """May the cache be read now?  Deferred invalidations are applied first:
        a process that could not invalidate never serves from the cache until
        it has (while another thread applies them, readers wait for it)."""
        if not self.settings.enabled:
            return False
        if self.deferred or self._apply_lock.locked():
            return self.flush_pending()
        return True

    def flush_pending(self) -> bool:
        """Apply deferred invalidations now; True when none remain."""
        with self._apply_lock:
            keys, tags, clear_all = self.deferred.take()
            if not (keys or tags or clear_all):
                return True
            if clear_all and self._call("deferred clear", self.backend.clear) is _FAILED:
                self.deferred.restore(keys, tags, clear_all)
                return False
            left = self._send(list(keys), list(tags))
            if left is not None:
                self.deferred.restore(*left)
                return False
        log.info("applied %d deferred cache invalidations", len(keys) + len(tags) + clear_all)
        return True

    def _send(self, keys: list[str], tags: list[str]) -> tuple[list[str], list[str]] | None:
        """Invalidate in chunks; None when all were applied, else what was not.
        A key's invalidation also invalidates its implicit tag, which every
        cached-view variant of that key carries (:mod:`.variants`)."""
        invalidate = self.backend.invalidate
        if not keys and not tags:
            return None
        if len(keys) <= CHUNK and len(tags) <= CHUNK:
            # the usual commit: one call, so one round trip and -- with read leases -- one
            # wait for the other processes to catch up, not one per kind
            if self._call("invalidate", invalidate, keys,
                          [key_tag(k) for k in keys] + tags) is _FAILED:
                return keys, tags
            return None
        for i in range(0, len(keys), CHUNK):
            chunk = keys[i:i + CHUNK]
            if self._call("invalidate", invalidate, chunk,
                          [key_tag(k) for k in chunk]) is _FAILED:
                return keys[i:], tags
        for i in range(0, len(tags), CHUNK):
            if self._call("invalidate", invalidate, (), tags[i:i + CHUNK]) is _FAILED:
                return [], tags[i:]
        return None

    # -- get-or-set ---------------------------------------------------------------
    def fetch(self, key: str, creator: Callable[[], Any], ttl: int | None,
              tags: Sequence[str], encode: Callable[[Any], bytes | None],
              bypass: bool = False, checked: bool = False,
              hold: Callable[[Callable[[bool], None]], None] | None = None,
              ) -> tuple[Any, bytes | None]:
        """The lease protocol.  Returns ``(value, stored_bytes)``: on a hit
        ``value`` is None and ``stored_bytes`` what the cache holds; on a miss
        ``value`` is the creator's result and ``stored_bytes`` its encoding
        (None if ``encode`` declined to store it, or it is larger than
        ``max_value_bytes``: then it is returned but not stored).

        ``checked=True``: the caller has already validated ``key``, the tuple
        ``tags`` (:func:`check_key`, internal) and ``ttl`` (None or a positive
        int) -- a cached view does it once per key, not on every hit.

        ``hold``: the caller decides later whether the value may be stored (a
        cached view decides on the final response).  Instead of filling, fetch
        calls ``hold(complete)`` and returns; ``complete(True)`` fills (the same
        checked fill: a lease lost meanwhile refuses it), ``complete(False)``
        releases the lease.  Until then the lease stands (waiters for the one
        load per cold key wait), at most ``lock_timeout``."""
        if not checked:
            check_key(key, internal=True)
            tags = _as_tuple(tags, internal=True)
            if ttl is not None and (not isinstance(ttl, int) or isinstance(ttl, bool)
                                    or ttl <= 0):
                raise ValueError(f"cache ttl must be a positive int (seconds), got {ttl!r}")
        if ttl is None:
            ttl = self.settings.default_ttl
        if bypass or not self._ready():
            self.stats.incr("bypasses")
            return creator(), None
        token = os.urandom(16).hex()  # the lease token (random, never reused)
        found = self._lookup(key, token, ttl, tags)
        if found is None:  # no lease: load without storing (counted by _lookup)
            return creator(), None
        if found.status is Status.HIT:
            return None, found.value
        return self._load(key, token, creator, encode, ttl, tags, found.versions, hold)

    def _lookup(self, key: str, token: str, ttl: int, tags: Sequence[str]) -> Any:
        """Look ``key`` up under the lease ``token``, polling while another
        loader holds its lease: the backend's answer on a HIT or once the lease
        is ours (LEASED); None when the caller must load without storing (the
        backend failed or bypassed, or the wait timed out)."""
        backend = self.backend
        deadline = None
        delay = _FIRST_POLL
        while True:
            found = self._call("lookup", backend.lookup, key, token, self.settings.lock_timeout,
                               ttl, tags)
            if found is _FAILED:
                self.stats.incr("bypasses")
                return None
            status = found.status
            if status is Status.HIT:
                self.stats.incr("hits")
                return found
            if status is Status.LEASED:
                return found
            if status is Status.BYPASS:
                self.stats.incr("bypasses")
                return None
            now = self._clock()
            if deadline is None:
                self.stats.incr("lock_waits")
                deadline = now + self.settings.wait_timeout
            elif now >= deadline:
                self.stats.incr("wait_timeouts")
                return None
            backend.wait(key, min(delay, max(0.0, deadline - now)))
            delay = min(delay * 2, _MAX_POLL)

    def _load(self, key: str, token: str, creator: Callable[[], Any],
              encode: Callable[[Any], bytes | None], ttl: int, tags: Sequence[str],
              versions: Any, hold: Callable[[Callable[[bool], None]], None] | None,
              ) -> tuple[Any, bytes | None]:
        """As the lease holder: call the creator, then fill (or hand the fill
        to ``hold``) or release the lease when the value is not to be stored."""
        self.stats.incr("misses")
        self.stats.incr("loads")
        try:
            value = creator()
            data = encode(value)
        except BaseException:
            self._release(key, token)
            raise
        if data is not None and len(data) > self.settings.max_value_bytes:
            self.stats.incr("too_large")
            log.info("cache value for %r not stored: %d bytes > examcache.max_value_bytes (%d)",
                     key[:200], len(data), self.settings.max_value_bytes)
            self._release(key, token)
            return value, None
        if data is None or self.deferred:
            # (while this process owes the store an invalidation, it stores nothing:
            # the value may predate a commit whose invalidation is still pending)
            self._release(key, token)
            return value, data
        if hold is not None:
            hold(lambda store: self._complete(key, token, data, ttl, tags, versions, store))
            return value, data
        self._complete(key, token, data, ttl, tags, versions, True)
        return value, data

    def _complete(self, key: str, token: str, data: bytes, ttl: int, tags: Sequence[str],
                  versions: Any, store: bool) -> None:
        """Fill ``key`` under the lease ``token`` (refused if the lease or a tag
        version changed since the lookup), or release the lease."""
        if not store or self.deferred:
            self._release(key, token)
            return
        stored = self._call("fill", self.backend.fill, key, token, data, ttl, tags, versions)
        if stored is not _FAILED:
            self.stats.incr("stores" if stored else "stale_rejected")

    def peek(self, key: str, bypass: bool = False, tags: Sequence[str] = ()) -> bytes | None:
        """The stored bytes of ``key`` if valid, without taking a lease (for a
        caller that may read but must not store); None on a miss or failure."""
        check_key(key, internal=True)
        if bypass or not self._ready():
            return None
        data = self._call("peek", self.backend.get, key, tuple(tags))
        if data is _FAILED:
            return None
        self.stats.incr("hits" if data is not None else "misses")
        return data

    def peek_local(self, key: str, tags: Sequence[str] = ()) -> bytes | None:
        """The stored bytes of ``key`` (a checked internal key; ``tags`` a tuple)
        only if they can be served with no I/O and no waiting
        (:meth:`.Backend.peek_local`), else None -- also while this process owes
        the store deferred invalidations or another thread is applying them (the
        ordinary path, :meth:`_ready`, applies them first; this never does, nor
        waits for it).  Counted as a hit when it returns bytes; a None is not
        counted (the caller takes the ordinary path, which counts)."""
        if self.deferred or self._apply_lock.locked() or not self.settings.enabled:
            return None
        try:
            data = self.backend.peek_local(key, tags)
        except Exception:  # noqa: BLE001 -- unsure: the ordinary path decides (and counts)
            return None
        if data is not None:
            self.stats.incr("hits")
        return data

    def peek_after_barrier(self, key: str, tags: Sequence[str] = ()) -> bytes | None:
        """As :meth:`peek_local`, but the backend may wait for its ordering barrier
        (:meth:`.Backend.peek_after_barrier`: the ``barrier`` near cache's held value, served
        after the barrier the ordinary read waits for, never read from Redis).  None also
        while the breaker is not closed (the ordinary path then serves without the cache:
        no barrier is waited for)."""
        if self.deferred or self._apply_lock.locked() or not self.settings.enabled \
                or self.breaker.state != "closed":
            return None
        try:
            data = self.backend.peek_after_barrier(key, tags)
        except Exception:  # noqa: BLE001 -- unsure: the ordinary path decides (and counts)
            return None
        if data is not None:
            self.stats.incr("hits")
        return data

    def early_peek(self) -> Callable[[str, Sequence[str]], bytes | None] | None:
        """What early hits (the tween, the WSGI fast path) read with: :meth:`peek_local`
        where the backend answers with no I/O, else :meth:`peek_after_barrier` where it
        answers after a barrier; None where it can do neither."""
        if self.backend.answers_locally():
            return self.peek_local
        if self.backend.answers_after_barrier():
            return self.peek_after_barrier
        return None

    def _release(self, key: str, token: str) -> None:
        self._call("release", self.backend.release, key, token)

    def get_or_set(self, key: str, creator: Callable[[], Any], ttl: int | None = None,
                   tags: Iterable[str] = (), *, bypass: bool = False) -> Any:
        """Return the JSON value cached under ``key``, or call ``creator()``,
        store its result (JSON) for ``ttl`` seconds under ``tags`` and return it.

        The result is always what JSON gives back (a hit, a miss and a bypass
        return equal values: a tuple comes back as a list).  A result JSON cannot
        hold raises :class:`~.codec.NotJSONValue` (a ``TypeError`` naming the key)
        on every call, stored or not, and releases the lease at once (no waiter
        waits for it).  ``creator`` runs at most once per cold key across threads
        and processes, and a backend failure never raises (G3, G4 in
        docs/design/cache-policy.md).
        """
        check_key(key)
        tags = _as_tuple(tags)  # (an iterator is read once: fetch gets the tuple)
        value, data = self.fetch(key, creator, ttl, tags,
                                 lambda v: codec.encode_json(v, key), bypass)
        if data is None:  # loaded without storing (bypass, wait timeout, backend down)
            return codec.decode_json(codec.encode_json(value, key))
        try:
            return codec.decode_json(data)
        except ValueError:  # not a JSON value (written by another version): load, do not store
            log.warning("cache key %r does not hold a JSON value; loading without the cache",
                        key[:200])
            self.stats.incr("bypasses")
            return codec.decode_json(codec.encode_json(
                creator() if value is None else value, key))

    # -- get / set / delete (docs/cache.md, "Direct access and cache_on_arguments") -------------
    def get(self, key: str, default: Any = None, *, bypass: bool = False) -> Any:
        """The JSON value stored under ``key``, else ``default`` (a miss, the cache
        disabled or failing, a value that is not JSON).  A read: no lease is taken,
        and the near cache answers where its mode makes that safe."""
        data = self.peek(check_key(key), bypass=bypass)
        if data is None:
            return default
        try:
            return codec.decode_json(data)
        except ValueError:  # a view's entry cannot be here (reserved keys); another version's
            return default

    def get_many(self, keys: Iterable[str], *, bypass: bool = False) -> dict[str, Any]:
        """``{key: value}`` of the ``keys`` that hit (one read per key, as :meth:`get`)."""
        found = {}
        for key in keys:
            value = self.get(key, _FAILED, bypass=bypass)
            if value is not _FAILED:
                found[key] = value
        return found

    def set(self, key: str, value: Any, ttl: int | None = None,
            tags: Iterable[str] = ()) -> bool:
        """Store ``value`` (JSON) under ``key``: :meth:`set_many` of one key."""
        return self.set_many({key: value}, ttl, tags)

    def set_many(self, mapping: Mapping[str, Any], ttl: int | None = None,
                 tags: Iterable[str] = ()) -> bool:
        """Store each value (JSON, else :class:`~.codec.NotJSONValue`) under its key,
        for ``ttl`` seconds, under ``tags``.  A write: the keys are invalidated first,
        on the path of :meth:`invalidate_now` (other processes' near caches drop them;
        with read leases this waits for their holders, as every write does), then
        each value is filled under a fresh lease, so no load that read before this
        call can store over it (G2, docs/design/cache-policy.md).  True when every
        value was stored; False when one was not: the cache disabled or failing (the
        invalidation is then deferred, as always), a value over ``max_value_bytes``,
        or a load that began after the invalidation holds the key (its value stands)."""
        items = [(check_key(k), codec.encode_json(v, k)) for k, v in mapping.items()]
        checked = _as_tuple(tags)
        ttl = self.settings.default_ttl if ttl is None else check_ttl(ttl)
        if not items:
            return True
        if not self.invalidate_now([k for k, _ in items]) or not self._ready():
            return False
        return all([self._store(k, data, ttl, checked) for k, data in items])

    def _store(self, key: str, data: bytes, ttl: int, tags: tuple[str, ...]) -> bool:
        """Fill ``key`` under a lease of our own, if the lookup grants one."""
        if len(data) > self.settings.max_value_bytes:
            self.stats.incr("too_large")
            return False
        token = os.urandom(16).hex()
        found = self._call("set", self.backend.lookup, key, token, self.settings.lock_timeout,
                           ttl, tags)
        if found is _FAILED or found.status is not Status.LEASED:
            return False
        stored = self._call("set", self.backend.fill, key, token, data, ttl, tags,
                            found.versions)
        if stored is _FAILED:
            return False
        self.stats.incr("stores" if stored else "stale_rejected")
        return bool(stored)

    def delete(self, key: str) -> bool:
        """Invalidate ``key`` now (:meth:`invalidate_now`)."""
        return self.invalidate_now([key])

    def delete_many(self, keys: Iterable[str]) -> bool:
        """Invalidate ``keys`` now (:meth:`invalidate_now`)."""
        return self.invalidate_now(keys)

    # -- invalidation ---------------------------------------------------------------
    def invalidate_now(self, keys: Iterable[str] = (), tags: Iterable[str] = ()) -> bool:
        """Invalidate at once; True when applied.  On a backend failure what was
        not applied is kept, retried in the background, and applied before this
        process reads the cache again (never dropped); False is returned."""
        keys = [check_key(k) for k in keys]
        tags = list(_as_tuple(tags))
        if not keys and not tags:
            return True
        self.stats.incr("invalidations", len(keys) + len(tags))
        left = self._send(keys, tags)
        if left is None:
            return True
        self.stats.incr("deferred", len(left[0]) + len(left[1]))
        self.deferred.add(*left)
        log.warning("cache invalidation of %d keys/%d tags deferred until the backend returns",
                    len(left[0]), len(left[1]))
        self._schedule_retry()
        return False

    def _schedule_retry(self) -> None:
        """Retry deferred invalidations in the background even if this process
        serves no cached read for a while (other processes read the store)."""
        with self._retry_lock:
            if self._retry_timer is not None and self._retry_timer.is_alive():
                return
            self._retry_timer = threading.Timer(self.settings.breaker_reset + 0.05, self._retry)
            self._retry_timer.daemon = True
            self._retry_timer.start()

    def _retry(self) -> None:
        with self._retry_lock:
            self._retry_timer = None
        if not self.flush_pending():
            self._schedule_retry()

    def usable(self) -> bool:
        """Is the backend believed reachable (the breaker not open)?"""
        return self.settings.enabled and self.breaker.state != "open"

    def clear(self) -> None:
        """Delete every value, lease and tag version under this policy's prefix."""
        self.backend.clear()

    def close(self) -> None:
        with self._retry_lock:
            if self._retry_timer is not None:
                self._retry_timer.cancel()
        if self.journal is not None:
            self.journal.close()
        self.backend.close()


class RequestCache:
    """``request.cache``: the policy bound to one request and its transaction."""

    __slots__ = ("policy", "request", "trace")

    def __init__(self, policy: CachePolicy, request) -> None:
        self.policy = policy
        self.request = request
        self.trace = trace_of(request)  # the debug toolbar's record, usually None

    def _work(self) -> CacheWork | None:
        """What the request's open transaction owes this policy (joined on first use);
        None when there is no transaction to wait for."""
        bridge = request_bridge(self.request, create=True)
        return None if bridge is None else bridge.work(self.policy, self.trace)

    def is_dirty(self) -> bool:
        """Has this request's transaction written (so the cache is bypassed)?"""
        bridge = request_bridge(self.request)
        return bridge is not None and bridge.wrote(self.policy)

    def mark_dirty(self) -> None:
        """Declare that the current transaction wrote (done by the ORM hook)."""
        work = self._work()
        if work is not None:
            work.dirty = True

    def get_or_set(self, key: str, creator: Callable[[], Any], ttl: int | None = None,
                   tags: Iterable[str] = ()) -> Any:
        """As :meth:`CachePolicy.get_or_set`; inside a transaction that has
        written, the cache is neither read nor filled (the caller sees its own
        writes; nothing uncommitted is stored)."""
        if self.trace is None:
            return self.policy.get_or_set(key, creator, ttl, tags, bypass=self.is_dirty())
        started = self.trace.start("get_or_set", key, tags)
        try:
            return self.policy.get_or_set(key, creator, ttl, tags, bypass=self.is_dirty())
        finally:
            self.trace.finish(started)

    def fetch(self, key, creator, ttl, tags, encode, checked=False, hold=None):
        if self.trace is None:
            return self.policy.fetch(key, creator, ttl, tags, encode, bypass=self.is_dirty(),
                                     checked=checked, hold=hold)
        started = self.trace.start("view", key, tags)
        result: tuple[Any, bytes | None] = (None, None)
        try:
            result = self.policy.fetch(key, creator, ttl, tags, encode, bypass=self.is_dirty(),
                                       checked=checked, hold=hold)
            return result
        finally:
            self.trace.finish(started, result[1] if isinstance(result, tuple) else None)

    def peek(self, key: str, tags: Sequence[str] = ()) -> bytes | None:
        if self.trace is None:
            return self.policy.peek(key, bypass=self.is_dirty(), tags=tags)
        started = self.trace.start("peek", key, tags)
        data = None
        try:
            data = self.policy.peek(key, bypass=self.is_dirty(), tags=tags)
            return data
        finally:
            self.trace.finish(started, data)

    def invalidate(self, *keys: str, tags: Iterable[str] = ()) -> None:
        """Invalidate ``keys`` and ``tags`` after the request's transaction
        commits (nothing on abort or failed commit); at once when there is no
        active transaction (G1, docs/design/transactions.md)."""
        checked = [check_key(k) for k in keys]
        tags = _as_tuple(tags)
        work = self._work()
        if work is None:
            self.policy.invalidate_now(checked, tags)
            if self.trace is not None:
                self.trace.invalidation("immediate", checked, tags)
            return
        work.dirty = True
        work.add(checked, tags)
        if self.trace is not None:
            self.trace.invalidation("queued", checked, tags)

    def get(self, key: str, default: Any = None) -> Any:
        """As :meth:`CachePolicy.get`; ``default`` inside a transaction that has
        written (the request sees its own writes, not the cache)."""
        return self.policy.get(key, default, bypass=self.is_dirty())

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """As :meth:`CachePolicy.get_many`; ``{}`` inside a transaction that has written."""
        return self.policy.get_many(keys, bypass=self.is_dirty())

    def set(self, key: str, value: Any, ttl: int | None = None,
            tags: Iterable[str] = ()) -> None:
        """:meth:`set_many` of one key."""
        self.set_many({key: value}, ttl, tags)

    def set_many(self, mapping: Mapping[str, Any], ttl: int | None = None,
                 tags: Iterable[str] = ()) -> None:
        """As :meth:`CachePolicy.set_many` (a write: other processes' near caches learn
        of it), done when the request's transaction commits -- after its
        invalidations, never on abort, the transaction then counting as having
        written -- or at once without one.  Keys, tags, ``ttl`` and the values (JSON)
        are checked now; the values are copied now."""
        values = {check_key(k): codec.decode_json(codec.encode_json(v, k))
                  for k, v in mapping.items()}
        checked = _as_tuple(tags)
        if ttl is not None:
            check_ttl(ttl)
        bridge = request_bridge(self.request, create=True)
        if bridge is None:
            self.policy.set_many(values, ttl, checked)
            return
        bridge.work(self.policy, self.trace).dirty = True

        def store() -> None:
            self.policy.set_many(values, ttl, checked)

        bridge.on_commit(store)

    def delete(self, key: str) -> None:
        """:meth:`invalidate` ``key``: after the commit, or at once without a transaction."""
        self.invalidate(key)

    def delete_many(self, keys: Iterable[str]) -> None:
        """:meth:`invalidate` ``keys``."""
        self.invalidate(*keys)

    def stats(self) -> dict[str, int]:
        """This process's counters (hits, misses, loads, lock_waits, errors, …)."""
        return self.policy.stats.snapshot()
