"""Scenario 3: stale reads under one writer and six readers, 300 writes (ours vs the seed).

The writer sets question 1 of exam 1 to ``[v<N>] <original text>`` with
strictly increasing N (never reused across runs); the readers loop on the
exam's questions and note which N they saw.  A read is *stale* when N is older
than the newest version whose PUT response had returned before the read was
sent (the race of ``tests/cache/servers.py``).  Ours: the demo's authenticated
``PUT /api/exams/1/questions/{id}`` (ORM flush -> invalidation after commit).
``ours-tracking``: the defaults (``near_cache = barrier``: a barrier per read);
``ours-tracking-2p``: the readers on one such process, the writer on another.
``ours-lease`` / ``ours-lease-2p``: the same with ``near_cache = lease`` (read leases and
early hits: reads take no barrier, writes wait for the readers' acknowledgement).
Seed: ``PUT /seed/...`` (update, commit, then DEL).  After the writer stops, one
more read checks the cache is fresh (a stale value left for the TTL).
"""
from __future__ import annotations

import bisect
import re
import threading
import time

from ..env import ORIGIN, PREFIX
from ..stats import median

WRITES = 300
READERS = 6
_VERSION = re.compile(r"^\[v(\d+)\] ")

TARGETS = (("ours", "ours", "/api/exams/1/questions", "/api/exams/1/questions/{q}"),
           ("ours-tracking", "ours", "/api/exams/1/questions", "/api/exams/1/questions/{q}"),
           ("ours-tracking-2p", "ours", "/api/exams/1/questions", "/api/exams/1/questions/{q}"),
           ("ours-lease", "ours", "/api/exams/1/questions", "/api/exams/1/questions/{q}"),
           ("ours-lease-2p", "ours", "/api/exams/1/questions", "/api/exams/1/questions/{q}"),
           ("seed", "peers", "/seed/exams/1/questions", "/seed/exams/1/questions/{q}"))
#: ``ours-tracking`` is the demo on the defaults (a tracked near cache, a barrier per read)
#: ``ours-tracking-2p``: the readers on a second such process, the writer on the first one
#: (G2 across processes: the invalidation reaches the readers' process through Redis only)
SETTINGS = {"ours": {"examcache.near_cache": "check", "examcache.early_hits": "false"},
            "ours-tracking": {},  # the defaults: near_cache = barrier
            "ours-tracking-2p": {},
            "ours-lease": {"examcache.near_cache": "lease"},
            "ours-lease-2p": {"examcache.near_cache": "lease"}}
WRITER = {"ours-tracking-2p": "ours-tracking", "ours-lease-2p": "ours-lease"}
OURS = ("ours", "ours-tracking", "ours-tracking-2p", "ours-lease", "ours-lease-2p")


def _version(data: dict, qid: int) -> int:
    for q in data["questions"]:
        if q["id"] == qid:
            m = _VERSION.match(q["text"])
            return int(m.group(1)) if m else 0
    raise AssertionError(f"question {qid} missing")


def race(server, get_path, put_path, qid, text, first, writes, headers,
         write_server=None) -> dict:
    returned: list[tuple[float, int]] = []
    reads: list[tuple[float, int]] = []
    done = threading.Event()
    errors: list[BaseException] = []
    lock = threading.Lock()

    def writer():
        client = (write_server or server).client()
        try:
            for v in range(first, first + writes):
                client.json("PUT", put_path.format(q=qid), {"text": f"[v{v}] {text}"},
                            headers=headers)
                returned.append((time.monotonic(), v))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            done.set()
            client.close()

    def reader():
        client = server.client()
        mine = []
        try:
            while not done.is_set():
                started = time.monotonic()
                data, _ = client.json("GET", get_path)
                mine.append((started, _version(data, qid)))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            client.close()
            with lock:
                reads.extend(mine)

    threads = [threading.Thread(target=reader) for _ in range(READERS)]
    threads.append(threading.Thread(target=writer))
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    elapsed = time.monotonic() - started
    if errors:
        raise errors[0]
    times = [t for t, _ in returned]
    stale = 0
    for t, version in reads:
        i = bisect.bisect_left(times, t)
        if i and version < returned[i - 1][1]:
            stale += 1
    client = server.client()
    final, _ = client.json("GET", get_path)
    client.close()
    last = first + writes - 1
    return {"stale": stale, "reads": len(reads), "writes": writes, "seconds": round(elapsed, 2),
            "fresh_after": _version(final, qid) == last}


def run(env, quick: bool = False, rounds: int = 3) -> dict:
    writes = 30 if quick else WRITES
    if quick:
        rounds = 1
    servers = {name: env.serve(app, name=name, ini=env.write_ini(f"{name}.ini", **SETTINGS[name])
                               if name in SETTINGS else None)
               for name, app, *_ in TARGETS}
    try:
        token = env.login(servers["ours"])
        client = servers["ours"].client()
        data, _ = client.json("GET", "/api/exams/1/questions")
        client.close()
        question = min(data["questions"], key=lambda q: q["position"])
        qid, text = question["id"], _VERSION.sub("", question["text"])
        r = env.redis()
        runs = {name: [] for name, *_ in TARGETS}
        version = 1
        for _ in range(rounds):
            for name, _app, get_path, put_path in TARGETS:
                r.delete(f"{PREFIX}v:@view:exam:1:questions{ORIGIN}", "seed:exam:1:questions")
                headers = {"Authorization": f"Bearer {token}"} if name in OURS else {}
                runs[name].append(race(servers[name], get_path, put_path, qid, text, version,
                                       writes, headers, servers.get(WRITER.get(name))))
                version += writes
        client = servers["ours"].client()  # leave the question as it was
        client.json("PUT", f"/api/exams/1/questions/{qid}", {"text": question["text"]},
                    headers={"Authorization": f"Bearer {token}"})
        client.close()
    finally:
        for s in servers.values():
            s.stop()
    out = {"writes": writes, "readers": READERS, "rounds": rounds, "targets": {}}
    for name, res in runs.items():
        out["targets"][name] = {
            "runs": res, "stale_median": median([x["stale"] for x in res]),
            "reads_median": median([x["reads"] for x in res]),
            "stale_total": sum(x["stale"] for x in res), "reads_total": sum(x["reads"] for x in res),
            "fresh_after_all": all(x["fresh_after"] for x in res)}
    out["goals"] = {f"{name}: 0 stale reads": (out["targets"][name]["stale_total"] == 0
                                                and out["targets"][name]["fresh_after_all"])
                    for name in OURS}
    return out
