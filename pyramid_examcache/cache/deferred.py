"""Invalidations this process could not send yet (the store was down or slow).

They must be applied before this process reads the cache again (the policy
checks) and are retried in the background.  :meth:`take` *moves* the queue out
(an invalidation deferred again while the taken batch is being applied stays
queued; it is never dropped by the batch's success), and :meth:`restore` puts
back what could not be applied.  The queue is bounded: past ``max_items`` it
degrades to "clear the whole prefix", which invalidates everything -- correct,
if heavy.

This queue lives in one process's memory; the durable log
(:mod:`.invalidation_log`) is what survives the process (G6,
docs/design/guarantees.md).
"""
from __future__ import annotations

import threading
from collections.abc import Iterable


class DeferredInvalidations:
    def __init__(self, max_items: int = 100_000) -> None:
        self.max_items = max_items
        self._lock = threading.Lock()
        self._keys: set[str] = set()
        self._tags: set[str] = set()
        self._clear_all = False

    def __bool__(self) -> bool:
        return bool(self._keys or self._tags or self._clear_all)

    def __len__(self) -> int:
        return len(self._keys) + len(self._tags) + int(self._clear_all)

    def add(self, keys: Iterable[str], tags: Iterable[str]) -> None:
        with self._lock:
            if self._clear_all:
                return
            self._keys.update(keys)
            self._tags.update(tags)
            if len(self._keys) + len(self._tags) > self.max_items:
                self._keys, self._tags, self._clear_all = set(), set(), True

    def add_clear(self) -> None:
        with self._lock:
            self._keys, self._tags, self._clear_all = set(), set(), True

    def take(self) -> tuple[set[str], set[str], bool]:
        """Remove and return everything queued: ``(keys, tags, clear_all)``."""
        with self._lock:
            taken = (self._keys, self._tags, self._clear_all)
            self._keys, self._tags, self._clear_all = set(), set(), False
            return taken

    def restore(self, keys: Iterable[str], tags: Iterable[str], clear_all: bool = False) -> None:
        """Put back what :meth:`take` returned and could not be applied."""
        if clear_all:
            self.add_clear()
        else:
            self.add(keys, tags)
