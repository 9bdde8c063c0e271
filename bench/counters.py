"""``GET /_bench/counters``: database work counted at the SQL level.

A SQLAlchemy ``before_cursor_execute`` listener on the app's engine counts the
statements that read the ``questions`` table (each load of an exam's questions
is exactly one such statement: ``question_selects``, used by the stampede
scenario).  It also counts every statement by its first word and by the thread
that sent it (``request`` or ``relay``, the durable invalidation log's thread
``examcache-relay``), the COMMITs likewise, and times each relay round
(``time.monotonic()``, which on Linux is one clock for every process, so a
client can line rounds up with its own requests) -- used by the write scenario.
This endpoint exists only in the bench's wrapper of the demo
(``bench.serve ours --counters``) and in the peers' app.
"""
from __future__ import annotations

import itertools
import threading
import time
from collections import Counter, deque

from sqlalchemy import event

RELAY_THREAD = "examcache-relay"


def _who() -> str:
    return "relay" if threading.current_thread().name == RELAY_THREAD else "request"


def include(config) -> None:
    engine = config.registry["dbengine"]
    counter = itertools.count()
    state = {"n": 0}
    lock = threading.Lock()
    statements: Counter = Counter()
    commits: Counter = Counter()
    #: per relay round: (t0, t1, DELETE statements, rows re-applied or None when it failed)
    rounds: deque = deque(maxlen=20000)

    def count(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("SELECT") and "FROM questions" in statement:
            state["n"] = next(counter) + 1
        verb = (statement.lstrip().split(None, 1) or ["?"])[0].upper()
        with lock:
            statements[f"{_who()} {verb}"] += 1

    def count_commit(conn):
        with lock:
            commits[_who()] += 1

    event.listen(engine, "before_cursor_execute", count)
    event.listen(engine, "commit", count_commit)

    def wrap_relay(registry) -> None:
        """Time each round of the durable log's relay (bench-only instance attribute)."""
        try:
            from pyramid_examcache.cache import get_policy

            journal = get_policy(registry).log
        except Exception:  # noqa: BLE001
            return
        if journal is None or getattr(journal, "_bench_timed", False):
            return
        inner = journal.run_once

        def run_once():
            before = statements["relay DELETE"]
            t0 = time.monotonic()
            relayed = None
            try:
                relayed = inner()
                return relayed
            finally:
                rounds.append((t0, time.monotonic(), statements["relay DELETE"] - before,
                               relayed))

        journal.run_once = run_once
        journal._bench_timed = True

    config.registry["bench.wrap_relay"] = wrap_relay  # bench.serve calls it once the app is built

    def view(request):
        wrap_relay(request.registry)
        with lock:
            out = {"question_selects": state["n"], "statements": dict(statements),
                   "commits": dict(commits)}
        out["relay_rounds"] = [r for r in list(rounds) if r[2] or r[3] != 0]  # that did something
        out["relay_rounds_total"] = len(rounds)
        try:
            from pyramid_examcache.cache import get_policy

            policy = get_policy(request.registry)
            out["cache"] = policy.stats.snapshot()
            out["log"] = dict(policy.journal.stats) if policy.journal is not None else None
        except Exception:  # noqa: BLE001
            pass
        return out

    config.add_route("bench_counters", "/_bench/counters")
    config.add_view(view, route_name="bench_counters", renderer="json")
