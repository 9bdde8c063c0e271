"""``GET /_bench/counters``: database loads counted at the SQL level.

A SQLAlchemy ``before_cursor_execute`` listener on the app's engine counts the
statements that read the ``questions`` table (each load of an exam's questions
is exactly one such statement).  This endpoint exists only in the bench's
wrapper of the demo (``bench.serve ours --counters``) and in the peers' app.
"""
from __future__ import annotations

import itertools

from sqlalchemy import event


def include(config) -> None:
    engine = config.registry["dbengine"]
    counter = itertools.count()
    state = {"n": 0}

    def count(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("SELECT") and "FROM questions" in statement:
            state["n"] = next(counter) + 1

    event.listen(engine, "before_cursor_execute", count)

    def view(request):
        out = {"question_selects": state["n"]}
        try:
            from pyramid_examcache.cache import get_policy

            out["cache"] = get_policy(request.registry).stats.snapshot()
        except Exception:  # noqa: BLE001
            pass
        return out

    config.add_route("bench_counters", "/_bench/counters")
    config.add_view(view, route_name="bench_counters", renderer="json")
