"""The shared send log behind ``mail.rate_limit``: one sorted log of sends per key, in Redis
(the mail queue's) or in SQLite (beside an embedded ``sqlite:///`` queue).

Both stores run the same algorithm, atomically (a Lua script; a ``BEGIN IMMEDIATE``
transaction), over ``windows`` = ``[(key, count, period), ...]``:

* :meth:`acquire` -- drop the entries at or before ``now - period``; if any key holds
  ``count`` entries, grant nothing and return the seconds until one leaves its window; else
  add ``token`` to every key with the score ``now + hold``: a send *in flight* counts in
  every window until it is finished, whatever it lasts (up to ``hold``);
* :meth:`finish` -- move ``token`` to ``now``: the finished send counts until ``now + period``.

So every send's arrival at the server lies between its entry's first and last score, which
is what makes the limit hold for *arrivals* in any window, not only for the moments the
slots were granted (proof: docs/design/mail.md, "Rate limits"). Redis uses its own clock
(``TIME``), one clock for every consumer host; SQLite, one host's, uses ``time.time()``.

Why not the ``limits`` library: its moving window logs the moment of each hit and has no
way to hold a slot while a send is in flight and move it to the send's end, so a slow send
admitted early and a fast one admitted a period later arrive within one window (N + 1
arrivals); and it has no SQLite storage for the embedded queue.
"""
from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence
from typing import Any

#: (key, count, period in seconds)
Window = tuple[str, int, float]

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local hold = tonumber(ARGV[2])
local wait = 0
for i, key in ipairs(KEYS) do
  local count, period = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - period)
  local used = redis.call('ZCARD', key)
  if used >= count then
    local entry = redis.call('ZRANGE', key, used - count, used - count, 'WITHSCORES')
    wait = math.max(wait, math.min(tonumber(entry[2]), now) + period - now)
  end
end
if wait > 0 then return tostring(wait) end
for i, key in ipairs(KEYS) do
  local period = tonumber(ARGV[2 + 2 * i])
  redis.call('ZADD', key, now + hold, ARGV[1])
  redis.call('PEXPIRE', key, math.ceil((period + hold) * 1000))
end
return '0'
"""

_FINISH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
for i, key in ipairs(KEYS) do redis.call('ZADD', key, 'XX', now, ARGV[1]) end
return 1
"""


class RedisWindows:
    """The send log in Redis (``client``: a redis-py client, e.g. the queue's)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._acquire = client.register_script(_ACQUIRE)
        self._finish = client.register_script(_FINISH)

    def acquire(self, windows: Sequence[Window], token: str, hold: float) -> float:
        """0.0: ``token`` holds a slot in every window; else the seconds to wait."""
        args: list[Any] = [token, repr(hold)]
        for _key, count, period in windows:
            args += [count, repr(period)]
        return float(self._acquire(keys=[w[0] for w in windows], args=args))

    def finish(self, windows: Sequence[Window], token: str) -> None:
        self._finish(keys=[w[0] for w in windows], args=[token])


class SqliteWindows:
    """The send log in a SQLite file (one table, ``BEGIN IMMEDIATE`` per call; a connection
    per thread)."""

    def __init__(self, filename: str, timeout: float = 10.0) -> None:
        self.filename, self.timeout = filename, timeout
        self._local = threading.local()

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection (the table is made on first use)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.filename, timeout=self.timeout, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("CREATE TABLE IF NOT EXISTS examcache_send_log (key TEXT NOT NULL, "
                         "token TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (key, token))")
            conn.execute("CREATE INDEX IF NOT EXISTS examcache_send_log_at "
                         "ON examcache_send_log (key, at)")
            self._local.conn = conn
        return conn

    def acquire(self, windows: Sequence[Window], token: str, hold: float) -> float:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            now, wait = time.time(), 0.0
            for key, count, period in windows:
                conn.execute("DELETE FROM examcache_send_log WHERE key = ? AND at <= ?",
                             (key, now - period))
                row = conn.execute("SELECT at FROM examcache_send_log WHERE key = ? "
                                   "ORDER BY at DESC LIMIT 1 OFFSET ?", (key, count - 1)).fetchone()
                if row is not None:  # ``count`` entries: wait for the oldest of the last count
                    wait = max(wait, min(row[0], now) + period - now)
            if wait <= 0:
                conn.executemany("INSERT OR REPLACE INTO examcache_send_log VALUES (?, ?, ?)",
                                 [(key, token, now + hold) for key, _c, _p in windows])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return max(wait, 0.0)

    def finish(self, windows: Sequence[Window], token: str) -> None:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            now = time.time()
            conn.executemany("UPDATE examcache_send_log SET at = ? WHERE key = ? AND token = ?",
                             [(now, key, token) for key, _c, _p in windows])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
