"""A circuit breaker with a queue of invalidations that could not be applied.

``closed``: every call goes to the backend.  After ``threshold`` consecutive
failures (or one failure of a probe) it *opens*: for ``reset_after`` seconds
no call is made (readers go straight to the database, paying no timeout).
Then it is *half-open*: exactly one caller probes; success closes it.

Invalidations that failed are kept (:meth:`defer`) and must be applied before
the cache is read again (:meth:`take_pending` / :meth:`done_pending`): a
process that could not invalidate never serves from the cache until it has.
The queue is bounded; past ``max_pending`` entries it degrades to "clear the
whole prefix", which is correct (everything is invalidated) if heavy.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Iterable


class Breaker:
    def __init__(self, threshold: int = 3, reset_after: float = 2.0,
                 max_pending: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.reset_after = reset_after
        self.max_pending = max_pending
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False
        self._keys: set[str] = set()
        self._tags: set[str] = set()
        self._clear_all = False

    @property
    def state(self) -> str:
        with self._lock:
            if self._opened_at is None:
                return "closed"
            if self._clock() - self._opened_at < self.reset_after:
                return "open"
            return "half-open"

    def allow(self) -> bool:
        """May the caller use the backend now?"""
        with self._lock:
            if self._opened_at is None:
                return True
            if self._probing or self._clock() - self._opened_at < self.reset_after:
                return False
            self._probing = True
            return True

    def success(self) -> None:
        if self._failures or self._opened_at is not None:
            with self._lock:
                self._failures = 0
                self._opened_at = None
                self._probing = False

    def failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._probing or self._failures >= self.threshold:
                self._opened_at = self._clock()
            self._probing = False

    # -- invalidations kept for later ------------------------------------------
    @property
    def has_pending(self) -> bool:
        return bool(self._keys or self._tags or self._clear_all)

    def defer(self, keys: Iterable[str], tags: Iterable[str]) -> None:
        with self._lock:
            self._keys.update(keys)
            self._tags.update(tags)
            if len(self._keys) + len(self._tags) > self.max_pending:
                self._keys.clear()
                self._tags.clear()
                self._clear_all = True

    def take_pending(self) -> tuple[set[str], set[str], bool]:
        with self._lock:
            return set(self._keys), set(self._tags), self._clear_all

    def done_pending(self, keys: set[str], tags: set[str], clear_all: bool) -> None:
        with self._lock:
            self._keys -= keys
            self._tags -= tags
            if clear_all:
                self._clear_all = False
