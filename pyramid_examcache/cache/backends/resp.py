"""A RESP client with one socket per thread (the Redis backends' hot path).

No pool checkout per call (on a hit that was a third of redis-py's CPU): each
thread keeps its own ``redis.Connection`` built from the pool's arguments, and
commands are packed here in one ``bytes`` (what redis-py's packer does, without
its per-call overhead).  A thread that ends drops its holder (thread-local data
dies with the thread), which disconnects it; a forked child never uses or
closes its parent's sockets.
"""
from __future__ import annotations

import os
import threading
import weakref

from ..forking import after_fork_in_child


def pack(*args: bytes | str | int) -> bytes:
    """One command in RESP."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        elif isinstance(arg, int):
            arg = b"%d" % arg
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


class ThreadConnection:
    """One thread's connection; disconnected when the thread (and so this holder) goes.

    ``epoch`` and ``generation`` are the key space the connection works in and the
    reconnection round it belongs to (a Sentinel primary's, :mod:`.sentinel`; always
    ``None`` and 0 on a single Redis)."""

    __slots__ = ("conn", "pid", "epoch", "generation", "__weakref__")

    def __init__(self, conn, generation: int = 0) -> None:
        self.conn = conn
        self.pid = os.getpid()
        self.epoch: str | None = None
        self.generation = generation

    def __del__(self) -> None:
        if self.pid == os.getpid():  # never close a parent's socket from a forked child
            try:
                self.conn.disconnect()
            except Exception:  # noqa: BLE001 -- interpreter shutdown, socket already gone
                pass


class ThreadConnections:
    """Every thread's :class:`ThreadConnection` on one pool's arguments (held weakly)."""

    def __init__(self, pool) -> None:
        self.pool = pool
        self._local = threading.local()
        self._all: weakref.WeakSet[ThreadConnection] = weakref.WeakSet()
        self._lock = threading.Lock()
        after_fork_in_child(self._after_fork)

    def get(self) -> ThreadConnection:
        """This thread's own connection (recreated after a fork)."""
        holder = getattr(self._local, "holder", None)
        if holder is None or holder.pid != os.getpid():
            holder = self._new()
        return holder

    def _new(self) -> ThreadConnection:
        pool = self.pool
        holder = ThreadConnection(pool.connection_class(**pool.connection_kwargs))
        self._local.holder = holder
        with self._lock:
            self._all.add(holder)
        return holder

    def close(self) -> None:
        """Disconnect every thread's connection (they reconnect if used again)."""
        with self._lock:
            holders, self._all = list(self._all), weakref.WeakSet()
        for holder in holders:
            holder.conn.disconnect()

    def _after_fork(self) -> None:
        """In a forked child: only the forking thread survived, and a parent thread may have
        held the lock.  The parent's holders are left alone (their pid says whose they are)."""
        self._lock = threading.Lock()
        self._all = weakref.WeakSet()
