"""The durable invalidation log: committed invalidations survive the process (G6 in
docs/design/guarantees.md).

Facebook's memcache replays deletes from the database's commit log (NSDI 2013,
"mcsqueal").  We do the same with one table in the application's database:

1. **Record** -- a writing transaction of a registered session (:mod:`.orm`)
   inserts one row ``(id, scope, keys, tags, created_at)`` *in the same
   transaction* as its data, just before the database COMMIT (one extra INSERT
   per writing transaction; reads are untouched).  The row exists if and only if
   the data committed.  ``scope`` is the cache's key prefix: two deployments
   sharing a database (blue/green with another ``examcache.key_prefix``) never
   take each other's rows.  (Not the Redis URL: one Redis is often reached
   under several addresses -- a proxy, a DNS alias.)
2. **Apply** -- after the COMMIT, the writer invalidates in Redis as before and,
   when that worked, queues the row's id for deletion (deleted in batches by
   the relay, outside any request).
3. **Relay** -- a daemon thread in every web process (and ``examcache-consumer``)
   wakes every ``examcache.relay_interval`` seconds, deletes the applied ids it
   queued, then reads its scope's rows.  A row it has *seen* for at least
   ``examcache.relay_after`` seconds (by its own monotonic clock: no two hosts'
   clocks are ever compared) is re-applied and deleted.  Relays take no lock:
   each reads its scope's rows on its own, and no transaction is open while
   Redis is called, so a relay that freezes mid-round (SIGSTOP, a paused VM)
   blocks no other relay; two relays applying one row is harmless (below).

A writer that dies between its COMMIT and its ``DEL``, or that cannot reach
Redis while the other processes can, leaves its row; any other process's relay
sees it within ``relay_interval`` and applies it ``relay_after`` later, at the
next round: at most ``relay_after + 2 * relay_interval`` seconds after the
commit, 4 s with the defaults (measured: about 3 s).

Re-applying is idempotent and never lets a stale value back: an invalidation deletes values,
leases and tag versions, so applying it again (or twice concurrently) costs at
most one extra miss, and a fill racing a replay is refused by the lease
protocol exactly as a fill racing the original invalidation.

The table: add :data:`metadata` to Alembic's ``target_metadata``, or call
:func:`create_invalidation_log` / :func:`drop_invalidation_log` in a migration.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Index, MetaData, String, Table, delete, func, select
from sqlalchemy.engine import Connection, Engine

from ..clock import utcnow
from .forking import after_fork_in_child, at_exit

log = logging.getLogger(__name__)

TABLE_NAME = "examcache_invalidation_log"
#: rows read (and re-applied) per relay round
BATCH = 500
#: seconds after which a database found without the table is looked at again
RECHECK_TABLE = 60.0


def _columns() -> list[Column]:
    return [
        Column("id", String(32), primary_key=True),
        Column("scope", String(255), nullable=False),
        Column("keys", JSON, nullable=False),
        Column("tags", JSON, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
    ]


_INDEX = (f"ix_{TABLE_NAME}_scope", ("scope", "created_at"))

#: Add this to your Alembic ``target_metadata`` (or use :func:`create_invalidation_log`).
metadata = MetaData()
log_table = Table(TABLE_NAME, metadata, *_columns())
Index(_INDEX[0], *(log_table.c[c] for c in _INDEX[1]))


def create_invalidation_log(op: Any) -> None:
    """Create the log table from an Alembic migration (``op``)."""
    op.create_table(TABLE_NAME, *_columns())
    op.create_index(_INDEX[0], TABLE_NAME, list(_INDEX[1]))


def drop_invalidation_log(op: Any) -> None:
    """Drop the log table from an Alembic migration (``op``)."""
    op.drop_index(_INDEX[0], table_name=TABLE_NAME)
    op.drop_table(TABLE_NAME)


class InvalidationLog:
    """One policy's durable log: recording, the queue of applied rows, the relay thread.

    ``apply(keys, tags) -> bool`` is the policy's own invalidation (True when
    Redis acknowledged it); ``usable()`` says whether the backend is believed up
    (a relay that cannot reach Redis skips its round instead of holding rows).
    """

    def __init__(self, apply: Callable[[list[str], list[str]], bool],
                 usable: Callable[[], bool], *, scope: str = "examcache:",
                 url: str | None = None, interval: float = 1.0, relay_after: float = 2.0,
                 monotonic: Callable[[], float] = time.monotonic, thread: bool = True) -> None:
        self._apply = apply
        self._usable = usable
        self.scope = scope[:255]
        self.url = url
        self.interval = interval
        self.relay_after = relay_after
        self._monotonic = monotonic
        self._run_thread = thread
        self._lock = threading.Lock()
        self._has_table: dict[Any, tuple[bool, float]] = {}
        self._first_seen: dict[str, float] = {}
        self._done: dict[Engine, list[str]] = {}
        self._engines: weakref.WeakSet[Engine] = weakref.WeakSet()
        self._own_engine: Engine | None = None
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._owner = os.getpid()
        self._stop = threading.Event()
        self.stats = {"recorded": 0, "applied_by_writer": 0, "relayed": 0, "relay_errors": 0}
        after_fork_in_child(self._after_fork)
        at_exit(self._flush_at_exit)

    # -- the writer's side --------------------------------------------------------
    def record(self, conn: Connection, keys: Iterable[str], tags: Iterable[str]) -> str | None:
        """Insert the row in ``conn``'s transaction; its id, or None when the
        database has no log table (logged once per database)."""
        engine = conn.engine
        if not self._table_exists(conn):
            return None
        row_id = uuid.uuid4().hex
        conn.execute(log_table.insert().values(id=row_id, scope=self.scope, keys=sorted(keys),
                                               tags=sorted(tags), created_at=utcnow()))
        self.stats["recorded"] += 1
        self._engines.add(engine)
        self.start()
        return row_id

    def applied(self, engine: Engine, row_id: str) -> None:
        """The writer applied row ``row_id`` itself: delete it in the next round."""
        self.stats["applied_by_writer"] += 1
        with self._lock:
            self._done.setdefault(engine, []).append(row_id)

    def _table_exists(self, conn: Connection) -> bool:
        key = conn.engine.url
        known, checked = self._has_table.get(key, (None, 0.0))
        now = self._monotonic()
        if known is None or (not known and now - checked >= RECHECK_TABLE):
            from sqlalchemy import inspect

            first = known is None
            known = inspect(conn).has_table(TABLE_NAME)
            self._has_table[key] = (known, now)
            if not known and first:
                log.error("no table %s in %s: committed cache invalidations are not durable "
                          "-- create it (pyramid_examcache.cache.invalidation_log."
                          "create_invalidation_log) or set examcache.invalidation_log = false",
                          TABLE_NAME, conn.engine.url.render_as_string(hide_password=True))
        return known

    # -- the relay ------------------------------------------------------------------
    def start(self) -> None:
        """Start this process's relay thread (again after a fork); idempotent."""
        if not self._run_thread:
            return
        if self._pid == os.getpid() and self._thread is not None:
            return
        with self._lock:
            if self._pid == os.getpid() and self._thread is not None:
                return
            self._pid = os.getpid()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, name="examcache-relay", daemon=True)
            self._thread.start()

    def _engines_to_relay(self) -> list[Engine]:
        engines = list(self._engines)
        if self.url and self._own_engine is None:
            from sqlalchemy import create_engine

            self._own_engine = create_engine(self.url, pool_size=1, max_overflow=1,
                                             pool_pre_ping=True)
        if self._own_engine is not None and all(e.url != self._own_engine.url for e in engines):
            engines.append(self._own_engine)
        return engines

    def _run(self) -> None:
        stop = self._stop
        while not stop.wait(self.interval):
            try:
                self.run_once()
            except Exception as exc:  # noqa: BLE001 -- the relay must outlive any error
                self.stats["relay_errors"] += 1
                log.warning("invalidation relay round failed (%s: %s); retrying",
                            type(exc).__name__, exc)

    def run_once(self) -> int:
        """One relay round over every known database; returns rows re-applied."""
        self.flush_applied()
        relayed = 0
        for engine in self._engines_to_relay():
            if self._usable():
                relayed += self._relay(engine)
        self.stats["relayed"] += relayed
        return relayed

    def _relay(self, engine: Engine) -> int:
        # 1. read this scope's rows
        with engine.begin() as conn:
            if not self._table_exists(conn):
                return 0
            rows = conn.execute(select(log_table.c.id, log_table.c["keys"], log_table.c.tags)
                                .where(log_table.c.scope == self.scope)
                                .order_by(log_table.c.created_at).limit(BATCH)).all()
        # 2. which have been seen long enough (this process's own clock)
        now = self._monotonic()
        with self._lock:
            seen = {row[0]: self._first_seen.get(row[0], now) for row in rows}
            if len(rows) < BATCH:  # forget ids that left the log (applied or relayed)
                self._first_seen = seen
            else:
                self._first_seen.update(seen)
        due = [row for row in rows if now - seen[row[0]] >= self.relay_after]
        if not due:
            return 0
        keys = sorted({k for row in due for k in row[1]})
        tags = sorted({t for row in due for t in row[2]})
        # 3. apply without any database lock or transaction open
        if not self._apply(keys, tags):
            return 0  # kept: applied by a later round (here or elsewhere)
        ids = [row[0] for row in due]
        with engine.begin() as conn:
            conn.execute(delete(log_table).where(log_table.c.id.in_(ids)))
        with self._lock:
            for row_id in ids:
                self._first_seen.pop(row_id, None)
        log.info("relayed %d logged invalidation(s) (%d keys, %d tags)",
                 len(due), len(keys), len(tags))
        return len(due)

    def pending_rows(self) -> int:
        """Rows of this scope in the log of this policy's databases (operators, tests)."""
        total = 0
        for engine in self._engines_to_relay():
            with engine.connect() as conn:
                if self._table_exists(conn):
                    total += conn.execute(select(func.count()).select_from(log_table)
                                          .where(log_table.c.scope == self.scope)).scalar_one()
        return total

    def flush_applied(self) -> None:
        """Delete the rows this process applied itself (done by every round, and
        at close and exit, so a short-lived script leaves no row behind)."""
        with self._lock:
            done, self._done = self._done, {}
        for engine, ids in done.items():
            try:
                with engine.begin() as conn:
                    for i in range(0, len(ids), BATCH):
                        conn.execute(delete(log_table).where(log_table.c.id.in_(ids[i:i + BATCH])))
            except Exception:
                with self._lock:  # keep them for the next round
                    self._done.setdefault(engine, []).extend(ids)
                raise

    def close(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)
        self._thread = None
        try:
            self.flush_applied()
        except Exception as exc:  # noqa: BLE001 -- the relays delete them later
            log.warning("could not delete applied log rows at close (%s)", exc)
        if self._own_engine is not None:
            self._own_engine.dispose()
            self._own_engine = None

    def _flush_at_exit(self) -> None:
        """At a clean exit of the process that applied them: delete the applied rows."""
        if self._owner != os.getpid():
            return
        try:
            self.flush_applied()
        except Exception:  # noqa: BLE001 -- best effort; a relay re-applies and deletes them
            pass

    def _after_fork(self) -> None:
        """In a forked child (pre-fork servers): threads do not survive a fork."""
        self._owner = os.getpid()
        self._lock = threading.Lock()  # a parent thread may have held it at the fork
        self._done = {}  # the parent deletes its own
        self._own_engine = None  # never share the parent's connections
        if self._thread is not None:
            self._thread = None
            self.start()


def attach_journal(policy: Any, settings: Any) -> InvalidationLog:
    """Give ``policy`` its durable log (``policy.journal``, relay thread started): its
    own invalidation is what the relay re-applies."""
    policy.journal = InvalidationLog(
        policy.invalidate_now, policy.usable, scope=settings.key_prefix,
        url=settings.invalidation_log_url,
        interval=settings.relay_interval, relay_after=settings.relay_after)
    policy.journal.start()
    return policy.journal


def start_relay(settings: Any) -> Any:
    """The relay of the durable log on its own, for a process that serves no cache reads
    (``examcache-consumer`` runs it as a thread beside the mail consumer).

    Built from what the relay needs and nothing more: the log's database
    (``examcache.invalidation_log_url``) and a backend that only writes -- no near cache,
    no tracking connection, no read lease (this process is never a lease holder writers
    wait for; as a writer it waits for the others' leases like any writer). Returns the
    writer (``.journal`` is the log; ``close()`` stops both), or ``None`` when there is
    nothing to relay: the log off, no database URL, or ``memory://`` (one process).
    """
    import dataclasses

    from ..topology import parse
    from .backends import make_backend
    from .policy import CachePolicy

    if (not settings.invalidation_log or not settings.invalidation_log_url
            or parse(settings.redis_url).kind == "memory"):
        return None
    writer = dataclasses.replace(settings, near_cache="off", near_cache_mb=0.0,
                                 early_hits=False)
    policy = CachePolicy(make_backend(writer), writer)
    attach_journal(policy, writer)
    return policy
