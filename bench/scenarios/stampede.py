"""Scenario 2: database loads for 50 concurrent cold requests (one process, four processes).

Loads are counted at the SQL level: every statement reading the ``questions``
table, reported by ``/_bench/counters`` of each server process (ours: the demo
wrapped by ``bench.serve ours --counters``; the peers' app has it too).  Before
each run the key is deleted from Redis (cold), the 50 clients open their
connections, wait on a barrier, and send their GET at once.
"""
from __future__ import annotations

import threading

from ..env import ORIGIN, PREFIX, Client
from ..stats import median

REQUESTS = 50
PROCESSES = 4

#: (name, app, path, redis keys to delete for a cold start, label)
TARGETS = (
    ("ours", "ours", "/api/exams/1/questions",
     (f"{PREFIX}v:@view:exam:1:questions{ORIGIN}", f"{PREFIX}l:@view:exam:1:questions{ORIGIN}"),
     "ours (leases)"),
    ("seed", "peers", "/seed/exams/1/questions", ("seed:exam:1:questions",),
     "seed cache-aside (no lock)"),
    ("dogpile", "peers", "/dogpile/exams/1/questions", ("dogpile:exam:1:questions",),
     "dogpile.cache, in-process lock"),
    ("dogpile-dlock", "peers", "/dogpile-dlock/exams/1/questions",
     ("dogpile-dlock:exam:1:questions", "_lock" + "dogpile-dlock:exam:1:questions"),
     "dogpile.cache, distributed_lock=True"),
)


def _counts(servers) -> int:
    total = 0
    for server in servers:
        client = server.client()
        data, _ = client.json("GET", "/_bench/counters")
        client.close()
        total += data["question_selects"]
    return total


def burst(servers, path: str, n: int = REQUESTS) -> dict:
    clients = [Client(servers[i % len(servers)].port) for i in range(n)]
    for c in clients:
        c.connect()
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def go(i):
        barrier.wait()
        try:
            status, headers, body = clients[i].request("GET", path)
            results[i] = (status, headers.get("x-cache"), len(body))
        except Exception as exc:  # noqa: BLE001
            results[i] = (repr(exc), None, 0)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for c in clients:
        c.close()
    return {"ok": sum(1 for r in results if r and r[0] == 200),
            "sizes": sorted({r[2] for r in results if r}),
            "x_cache": {k: sum(1 for r in results if r and r[1] == k) for k in ("HIT", "MISS")}}


def run(env, quick: bool = False, rounds: int = 3) -> dict:
    if quick:
        rounds = 1
    r = env.redis()
    out = {"requests": REQUESTS, "processes": [1, PROCESSES], "rounds": rounds,
           "count": "SQL statements reading the questions table (SQLAlchemy before_cursor_execute "
                    "in each server process), summed over processes", "targets": {}}
    for name, app, path, keys, label in TARGETS:
        servers = [env.serve(app, name=f"{name}{i}", counters=(app == "ours"))
                   for i in range(PROCESSES)]
        try:
            entry = {"label": label}
            for nproc in (1, PROCESSES):
                group = servers[:nproc]
                loads = []
                for _ in range(rounds):  # alternate cold runs within the target
                    r.delete(*keys)
                    before = _counts(servers)
                    res = burst(group, path)
                    assert res["ok"] == REQUESTS and len(res["sizes"]) == 1, (name, res)
                    loads.append(_counts(servers) - before)
                entry[f"{nproc}p"] = {"loads": loads, "median": median(loads)}
            out["targets"][name] = entry
        finally:
            for s in servers:
                s.stop()
    ours = out["targets"]["ours"]
    out["goals"] = {"ours: 1 load (1 process)": ours["1p"]["median"] == 1,
                    f"ours: 1 load ({PROCESSES} processes)": ours[f"{PROCESSES}p"]["median"] == 1}
    return out
