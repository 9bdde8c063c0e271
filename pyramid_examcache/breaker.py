"""A circuit breaker that always learns the outcome of the calls it lets through.

``closed``: every call goes to the backend.  After ``threshold`` consecutive
failures (or one failed probe) it *opens*: for ``reset_after`` seconds no call
is made (readers go straight to the database, paying no timeout).  Then it is
*half-open*: exactly one caller probes; success closes it, failure re-opens it.

Every use of the backend goes through :meth:`Breaker.call`, which reports the
outcome itself -- success, a backend failure, or (for any other exception) "no
verdict", which hands the probe back.  No caller can take the half-open probe
and forget to report: that was how a background retry once left the breaker
half-open, with its probe taken, for the life of the process.

Why not pybreaker: it reads the wall clock (``datetime.now``) with no way to
inject one, so its transitions cannot be driven deterministically in tests,
and in half-open it lets every concurrent caller through, each paying the
socket timeout when the store is still down.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class BreakerOpen(Exception):
    """The breaker refused the call: the backend is presumed down."""


class Breaker:
    def __init__(self, threshold: int = 3, reset_after: float = 2.0,
                 errors: tuple[type[BaseException], ...] = (Exception,),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.reset_after = reset_after
        self.errors = errors
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> str:
        with self._lock:
            if self._opened_at is None:
                return "closed"
            return "open" if self._refusing() else "half-open"

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` if the breaker allows it, reporting the outcome.

        Raises :class:`BreakerOpen` without calling ``fn`` when open (or when
        another caller holds the half-open probe); re-raises ``fn``'s exception
        after recording it (one of ``errors`` counts as a failure; anything
        else gives the probe back without a verdict).
        """
        # (closed with no failures -- every cache hit -- costs two attribute reads
        # here instead of two method calls: the same checks _allow/_success start with)
        if self._opened_at is not None and not self._allow():
            raise BreakerOpen()
        try:
            result = fn(*args)
        except self.errors:
            self._failure()
            raise
        except BaseException:
            self._no_verdict()
            raise
        if self._failures or self._opened_at is not None:
            self._success()
        return result

    # -- transitions (private: only call() may report outcomes) ---------------
    def _allow(self) -> bool:
        if self._opened_at is None:  # closed: no lock on the hot path
            return True
        with self._lock:
            if self._opened_at is None:
                return True
            if self._refusing():
                return False
            self._probing = True
            return True

    def _refusing(self) -> bool:
        """Open and refusing calls: within ``reset_after``, or a probe is out (lock held)."""
        opened = self._opened_at
        return self._probing or (opened is not None
                                 and self._clock() - opened < self.reset_after)

    def _success(self) -> None:
        if self._failures or self._opened_at is not None:
            with self._lock:
                self._failures = 0
                self._opened_at = None
                self._probing = False

    def _failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._probing or self._opened_at is not None or self._failures >= self.threshold:
                self._opened_at = self._clock()
            self._probing = False

    def _no_verdict(self) -> None:
        if self._probing:
            with self._lock:
                self._probing = False
