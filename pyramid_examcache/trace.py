"""What one request did with the cache and the mailer, for the debug toolbar's panel.

Off unless something (the panel of :mod:`pyramid_examcache.debugtoolbar`) puts a
:class:`Trace` in ``request.environ[ENVIRON_KEY]``: then ``request.cache`` records every
operation (key, tags, the events the policy counted -- hit, miss, wait, bypass, stored,
refused --, bytes, time), the invalidations queued and applied after the commit (or
dropped by an abort), and ``request.mailer`` the mails queued. Without a trace the cost is
one dictionary lookup per ``request.cache`` and a context variable read per counted event.
"""
from __future__ import annotations

import time
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

ENVIRON_KEY = "pyramid_examcache.trace"

#: the operation being traced in this thread / task (events are added to it)
_CURRENT: ContextVar[Operation | None] = ContextVar("examcache_operation", default=None)


#: (counted events, the word shown), in the order shown
_OUTCOMES = (
    (("hits",), "HIT"),
    (("lock_waits",), "WAIT"),
    (("misses",), "MISS"),
    (("bypasses", "param_bypasses", "vary_bypasses"), "BYPASS"),
    (("stores",), "stored"),
    (("stale_rejected",), "refused (stale)"),
    (("too_large",), "refused (too large)"),
    (("wait_timeouts",), "wait timed out"),
    (("errors",), "ERROR"),
)


@dataclass
class Operation:
    kind: str
    key: str
    tags: tuple[str, ...]
    events: list[str] = field(default_factory=list)
    nbytes: int | None = None
    ms: float = 0.0

    @property
    def outcome(self) -> str:
        """HIT, MISS (+ stored / refused), WAIT, BYPASS, as counted by the policy."""
        words = [word for events, word in _OUTCOMES if any(e in self.events for e in events)]
        return " ".join(words) or "-"


@dataclass
class Trace:
    operations: list[Operation] = field(default_factory=list)
    invalidations: list[dict[str, Any]] = field(default_factory=list)
    mails: list[dict[str, Any]] = field(default_factory=list)

    def start(self, kind: str, key: str, tags: Iterable[str]) -> tuple[Operation, Any, float]:
        op = Operation(kind, key, (tags,) if isinstance(tags, str) else tuple(tags or ()))
        return op, _CURRENT.set(op), time.perf_counter()

    def finish(self, started: tuple[Operation, Any, float], data: Any = None) -> None:
        op, token, t0 = started
        op.ms = (time.perf_counter() - t0) * 1000
        if isinstance(data, (bytes, bytearray)):
            op.nbytes = len(data)
        _CURRENT.reset(token)
        self.operations.append(op)

    def invalidation(self, when: str, keys: Iterable[str], tags: Iterable[str]) -> None:
        """``when``: ``queued`` (waits for the commit), ``applied``, ``failed`` (kept for
        retry), ``dropped`` (the transaction aborted) or ``immediate`` (no transaction)."""
        self.invalidations.append({"when": when, "keys": sorted(keys), "tags": sorted(tags)})


    def settle(self) -> None:
        """After the transaction ended: what was queued and never applied was dropped
        (an aborted or doomed transaction runs no after-commit hook)."""
        done_keys: set[str] = set()
        done_tags: set[str] = set()
        queued_keys: set[str] = set()
        queued_tags: set[str] = set()
        for inv in self.invalidations:
            keys, tags = (queued_keys, queued_tags) if inv["when"] == "queued" else (
                done_keys, done_tags)
            keys.update(inv["keys"])
            tags.update(inv["tags"])
        if queued_keys - done_keys or queued_tags - done_tags:
            self.invalidation("dropped", queued_keys - done_keys, queued_tags - done_tags)


def note(event: str) -> None:
    """Called by the policy's counters: the event belongs to the operation being traced."""
    op = _CURRENT.get()
    if op is not None:
        op.events.append(event)


def trace_of(request: Any) -> Trace | None:
    environ = getattr(request, "environ", None)
    return environ.get(ENVIRON_KEY) if environ is not None else None
