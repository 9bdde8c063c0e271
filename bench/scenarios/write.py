"""Scenario 7: the write path's cost of the durable invalidation log (G6).

The demo is served twice side by side on the same private PostgreSQL and Redis:
``on`` with ``examcache.invalidation_log = true`` (the default: one INSERT into
``examcache_invalidation_log`` in every writing transaction, the row's id queued
after the COMMIT and deleted in batches by the relay thread every
``examcache.relay_interval`` s) and ``off`` with ``examcache.invalidation_log =
false``.  Both are the bench's wrapper of the demo (``bench.serve ours
--counters``: the demo plus ``/_bench/counters``, which counts SQL statements
per thread and times the relay's rounds; the same wrapper for both).

Each run is N authenticated ``PUT /api/exams/1/questions/{id}`` that each change
the question's text (so each is a writing transaction that invalidates the
exam's keys): *sequential* (one keep-alive connection, one question) and
*concurrent* (4 writers, one connection and one question each, started
together).  Runs alternate between the two servers (on, off, on, off ...).
Each round ends with an *interleaved* run: N pairs of sequential PUTs, one to
each server (on first, then off first, ...), whose paired differences are the
least noisy estimate of the per-PUT cost on a shared machine.
After an ``on`` run the scenario waits until the relay has emptied the log
table, so that its DELETEs land in that run's accounting and not in the next
``off`` run; at the end it checks the table is empty.
"""
from __future__ import annotations

import itertools
import os
import threading
import time

from ..stats import median, percentile, ratio
from .throughput import _process_cpu, wait_quiet

WARMUP = 30
WRITES = 300
WRITERS = 4
ROUNDS = 5
CONFIGS = (("on", "true"), ("off", "false"))
MODES = ("sequential", "concurrent")
TABLE = "examcache_invalidation_log"


class _Writer:
    """PUTs with strictly new texts (a PUT that changes nothing writes nothing)."""

    def __init__(self, token: str, questions: dict[int, str]) -> None:
        self.headers = {"Authorization": f"Bearer {token}"}
        self.questions = questions
        self.n = itertools.count(1)

    def put(self, client, qid: int) -> None:
        status, _, data = client.request("PUT", f"/api/exams/1/questions/{qid}",
                                         {"text": f"[w{next(self.n)}] {self.questions[qid]}"},
                                         self.headers)
        if status != 200:
            raise AssertionError(f"PUT question {qid} -> {status}: {data[:300]!r}")


def sequential(server, writer: _Writer, qid: int, writes: int) -> tuple[list, float]:
    client = server.client()
    client.connect()
    spans = []
    try:
        started = time.monotonic()
        for _ in range(writes):
            t0 = time.monotonic()
            writer.put(client, qid)
            spans.append((t0, time.monotonic()))
        return spans, time.monotonic() - started
    finally:
        client.close()


def concurrent(server, writer: _Writer, qids: list[int], writes: int) -> tuple[list, float]:
    each = writes // len(qids)
    spans: list[tuple[float, float]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(qids) + 1)

    def work(qid: int) -> None:
        client = server.client()
        mine = []
        try:
            client.connect()
            barrier.wait()
            for _ in range(each):
                t0 = time.monotonic()
                writer.put(client, qid)
                mine.append((t0, time.monotonic()))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
            barrier.abort()
        finally:
            client.close()
            with lock:
                spans.extend(mine)

    threads = [threading.Thread(target=work, args=(q,)) for q in qids]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.monotonic()
    for t in threads:
        t.join(600)
    elapsed = time.monotonic() - started
    if errors:
        raise errors[0]
    return spans, elapsed


def interleaved(servers, writer: _Writer, qid: int, writes: int) -> dict[str, list]:
    """``writes`` pairs of sequential PUTs, one to each server, alternately on first and
    off first: machine noise hits both alike, and each pair is a paired sample."""
    clients = {name: servers[name].client() for name, _ in CONFIGS}
    spans: dict[str, list] = {name: [] for name, _ in CONFIGS}
    try:
        for c in clients.values():
            c.connect()
        for i in range(writes):
            for name in (("on", "off") if i % 2 == 0 else ("off", "on")):
                t0 = time.monotonic()
                writer.put(clients[name], qid)
                spans[name].append((t0, time.monotonic()))
    finally:
        for c in clients.values():
            c.close()
    return spans


def measured_interleaved(servers, pg: "_Pg", writer: _Writer, qid: int, writes: int,
                         quiet: bool) -> tuple[dict, dict]:
    busy = wait_quiet(patience=10.0) if quiet else None
    spans = interleaved(servers, writer, qid, writes)
    rows_left, drain_s = pg.drain()
    c1 = _counters(servers["on"])
    first = min(s[0] for v in spans.values() for s in v)
    last = max(s[1] for v in spans.values() for s in v)
    rounds = [r for r in c1["relay_rounds"] if r[1] >= first and r[0] <= last]
    flagged = {name: [(s, any(s[0] < r1 and r0 < s[1] for r0, r1, *_ in rounds))
                      for s in v] for name, v in spans.items()}
    diffs = [((a1 - a0) - (b1 - b0)) * 1e3 for (a0, a1), (b0, b1) in zip(spans["on"], spans["off"])]
    out = {name: _latency(v) for name, v in spans.items()}
    out.update({"median_diff_ms": median(diffs), "mean_diff_ms": sum(diffs) / len(diffs),
                "on_slower_share": sum(d > 0 for d in diffs) / len(diffs),
                "relay_delete_rounds_during_run": len(rounds),
                "relay_round_ms": [round((r1 - r0) * 1e3, 2) for r0, r1, *_ in rounds],
                "log_rows_left": rows_left, "drain_s": round(drain_s, 3),
                "busy_before": None if busy is None else round(busy, 3),
                "_t0": first, "_t1": last, "_diffs": diffs})
    return out, flagged


def _counters(server) -> dict:
    client = server.client()
    try:
        data, _ = client.json("GET", "/_bench/counters")
    finally:
        client.close()
    return data


def _diff(after: dict, before: dict) -> dict:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


class _Pg:
    """The bench's admin connection to the private database: log rows, WAL, backend CPU."""

    def __init__(self, env) -> None:
        self.conn = env.pg()
        self.pid = self.conn.execute("SELECT pg_backend_pid()").fetchone()[0]

    def rows(self) -> int:
        return self.conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0]

    def table_exists(self) -> bool:
        return self.conn.execute("SELECT to_regclass(%s) IS NOT NULL", (TABLE,)).fetchone()[0]

    def wal(self) -> str:
        return self.conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]

    def wal_bytes(self, start: str, end: str) -> int:
        return int(self.conn.execute("SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)",
                                     (end, start)).fetchone()[0])

    def backend_cpu(self) -> dict[int, float]:
        """CPU seconds of every backend connected to this database but ours."""
        pids = [r[0] for r in self.conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()")]
        out = {}
        for pid in pids:
            try:
                out[pid] = _process_cpu(pid)
            except (OSError, ValueError, IndexError):
                pass
        return out

    def drain(self, timeout: float = 10.0) -> tuple[int, float]:
        """Wait until the relay emptied the log; (rows left, seconds waited)."""
        started = time.monotonic()
        while True:
            rows = self.rows()
            if rows == 0 or time.monotonic() - started >= timeout:
                return rows, time.monotonic() - started
            time.sleep(0.02)

    def close(self) -> None:
        self.conn.close()


def _latency(spans) -> dict:
    ms = [(t1 - t0) * 1e3 for t0, t1 in spans]
    return {"n": len(ms), "p50_ms": percentile(ms, 50), "p90_ms": percentile(ms, 90),
            "p99_ms": percentile(ms, 99), "mean_ms": sum(ms) / len(ms) if ms else None,
            "max_ms": max(ms) if ms else None}


def measured(name, server, pg: _Pg, fn, writes: int, quiet: bool) -> tuple[dict, list]:
    busy = wait_quiet(patience=10.0) if quiet else None
    c0 = _counters(server)
    s0, b0, w0 = _process_cpu(server.proc.pid), pg.backend_cpu(), pg.wal()
    spans, elapsed = fn()
    rows_left, drain_s = pg.drain() if name == "on" else (None, None)
    s1, b1, w1 = _process_cpu(server.proc.pid), pg.backend_cpu(), pg.wal()
    c1 = _counters(server)
    n = len(spans)
    statements = _diff(c1["statements"], c0["statements"])
    commits = _diff(c1["commits"], c0["commits"])
    first, last = spans[0][0] if spans else 0, max((t1 for _, t1 in spans), default=0)
    rounds = [r for r in c1["relay_rounds"] if r[1] >= first and r[0] <= last]
    overlapping = [s for s in spans if any(s[0] < r1 and r0 < s[1] for r0, r1, *_ in rounds)]
    out = {"_t0": first, "_t1": last, **_latency(spans), "seconds": round(elapsed, 3), "per_s": n / elapsed,
           "server_cpu_us": (s1 - s0) / n * 1e6,
           "pg_cpu_us": sum(v - b0.get(pid, 0.0) for pid, v in b1.items()) / n * 1e6,
           "wal_bytes": pg.wal_bytes(w0, w1) / n,
           "request_statements": {k.split(" ", 1)[1]: v / n for k, v in statements.items()
                                  if k.startswith("request ")},
           "request_commits": commits.get("request", 0) / n,
           "relay_statements": {k.split(" ", 1)[1]: v for k, v in statements.items()
                                if k.startswith("relay ")},
           "relay_commits": commits.get("relay", 0),
           "relay_delete_rounds_during_run": len(rounds),
           "relay_round_ms": [round((r1 - r0) * 1e3, 2) for r0, r1, *_ in rounds],
           "puts_overlapping_relay_delete": len(overlapping),
           "log_rows_left": rows_left, "drain_s": None if drain_s is None else round(drain_s, 3),
           "busy_before": None if busy is None else round(busy, 3)}
    if writes != n:
        raise AssertionError(f"{name}: {n} PUTs recorded, {writes} expected")
    return out, [(s, s in overlapping) for s in spans]


def _summary(runs: list[dict], spans: list) -> dict:
    pooled = _latency([s for s, _ in spans])
    over = _latency([s for s, o in spans if o])
    clear = _latency([s for s, o in spans if not o])
    keys = ("per_s", "server_cpu_us", "pg_cpu_us", "wal_bytes")
    return {**pooled, **{k: median([r[k] for r in runs]) for k in keys},
            "overlapping_relay_delete": over, "not_overlapping": clear, "runs": runs}


def _table_stats(env) -> dict:
    """The log table's cumulative statistics once the servers (and their backends,
    which flush their statistics on exit) are gone."""
    deadline = time.monotonic() + 5.0
    with env.pg() as conn:
        while time.monotonic() < deadline and conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()").fetchone()[0]:
            time.sleep(0.05)
        row = conn.execute(
            "SELECT n_tup_ins, n_tup_del, n_live_tup, n_dead_tup, autovacuum_count, "
            "pg_total_relation_size(relid) FROM pg_stat_user_tables WHERE relname = %s",
            (TABLE,)).fetchone()
        rows = conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0]
    keys = ("inserted", "deleted", "live", "dead", "autovacuums", "total_bytes")
    return {**dict(zip(keys, row)), "rows": rows} if row else {"rows": rows}


def _mean_counts(dicts: list[dict]) -> dict:
    keys = sorted({k for d in dicts for k in d})
    return {k: sum(d.get(k, 0) for d in dicts) / len(dicts) for k in keys}


def run(env, quick: bool = False, rounds: int = ROUNDS) -> dict:
    writes, warmup = (WRITES, WARMUP) if not quick else (40, 8)
    if quick:
        rounds = 1
    servers = {}
    pg = _Pg(env)
    try:
        if not pg.table_exists():
            raise AssertionError(f"no table {TABLE}: migration 0002 did not run")
        # rows left by processes that exited before their relay deleted them (the
        # initdb script's own seed row): the first relay round re-applies them
        rows_before = pg.rows()
        for name, flag in CONFIGS:
            ini = env.write_ini(f"write-{name}.ini", **{"examcache.invalidation_log": flag})
            servers[name] = env.serve("ours", ini=ini, name=f"write-{name}", counters=True)
        token = env.login(servers["on"])
        client = servers["on"].client()
        data, _ = client.json("GET", "/api/exams/1/questions")
        client.close()
        originals = sorted(data["questions"], key=lambda q: (q["position"], q["id"]))[:WRITERS]
        writer = _Writer(token, {q["id"]: q["text"] for q in originals})
        qids = [q["id"] for q in originals]
        relay_interval = float(env.settings().get("examcache.relay_interval", 1.0))
        t_warm = time.monotonic()
        for name, _ in CONFIGS:  # connections, pools, the relay thread, the table's pages
            sequential(servers[name], writer, qids[0], warmup)
            concurrent(servers[name], writer, qids, max(WRITERS, warmup // 2 // WRITERS * WRITERS))
        pg.drain()
        runs = {mode: {name: [] for name, _ in CONFIGS} for mode in MODES}
        spans = {mode: {name: [] for name, _ in CONFIGS} for mode in MODES}
        order = []
        inter_runs: list[dict] = []
        inter_spans: dict[str, list] = {name: [] for name, _ in CONFIGS}
        inter_diffs: list[float] = []
        timeline = [("warm-up", t_warm, time.monotonic())]
        for _ in range(rounds):
            for mode in MODES:
                for name, _ in CONFIGS:
                    server = servers[name]
                    if mode == "sequential":
                        fn = lambda s=server: sequential(s, writer, qids[0], writes)  # noqa: E731
                    else:
                        fn = lambda s=server: concurrent(s, writer, qids, writes)  # noqa: E731
                    result, run_spans = measured(name, server, pg, fn, writes, quiet=not quick)
                    runs[mode][name].append(result)
                    spans[mode][name].extend(run_spans)
                    order.append(f"{mode[:3]}-{name}")
                    timeline.append((order[-1], result.pop("_t0"), result.pop("_t1")))
            result, flagged = measured_interleaved(servers, pg, writer, qids[0], writes,
                                                   quiet=not quick)
            inter_runs.append(result)
            for name, v in flagged.items():
                inter_spans[name].extend(v)
            inter_diffs.extend(result.pop("_diffs"))
            order.append("interleaved")
            timeline.append((order[-1], result.pop("_t0"), result.pop("_t1")))
        time.sleep(relay_interval * 2 + 0.5)  # two more relay rounds, then look
        rows_after = pg.rows()
        final = {name: _counters(servers[name]) for name, _ in CONFIGS}
        for q in originals:  # leave the questions as they were
            c = servers["off"].client()
            c.json("PUT", f"/api/exams/1/questions/{q['id']}", {"text": q["text"]},
                   headers=writer.headers)
            c.close()
    finally:
        for s in servers.values():
            s.stop()
        pg.close()
    table = _table_stats(env)
    out = {"writes": writes, "warmup": warmup, "writers": WRITERS, "rounds": rounds,
           "order": order, "relay_interval_s": relay_interval, "cores": os.cpu_count(),
           "modes": {}, "log_rows_before": rows_before, "log_rows_after": rows_after,
           "log_table": table,
           "log_stats": {name: final[name].get("log") for name, _ in CONFIGS},
           "relay_reapplied": [  # rounds whose relay found rows older than relay_after
               {"at_s": round(r[0] - t_warm, 3), "rows": r[3],
                "during": [p for p, a, b in timeline if a - 0.5 <= r[0] <= b + 0.5]}
               for r in final["on"]["relay_rounds"] if r[3]],
           "relay_rounds_total": {name: final[name].get("relay_rounds_total")
                                  for name, _ in CONFIGS}}
    on_i, off_i = (_latency([sp for sp, _ in inter_spans[n]]) for n in ("on", "off"))
    over = [sp for sp, o in inter_spans["on"] if o]
    out["interleaved"] = {
        "pairs": len(inter_diffs), "on": on_i, "off": off_i,
        "ratios": {k: ratio(on_i[k], off_i[k]) for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms")},
        "median_diff_ms": median(inter_diffs),
        "mean_diff_ms": sum(inter_diffs) / len(inter_diffs) if inter_diffs else None,
        "on_slower_share": (sum(d > 0 for d in inter_diffs) / len(inter_diffs)
                            if inter_diffs else None),
        "on_overlapping_relay_delete": _latency(over),
        "on_not_overlapping": _latency([sp for sp, o in inter_spans["on"] if not o]),
        "runs": inter_runs}
    for mode in MODES:
        configs = {name: _summary(runs[mode][name], spans[mode][name]) for name, _ in CONFIGS}
        on, off = configs["on"], configs["off"]
        paired = [ratio(a["mean_ms"], b["mean_ms"])
                  for a, b in zip(on["runs"], off["runs"])]
        out["modes"][mode] = {
            "configs": configs,
            "ratios": {k: ratio(on[k], off[k]) for k in
                       ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "per_s", "server_cpu_us",
                        "pg_cpu_us")},
            "paired_mean_ratios": paired,
            "paired_per_s_ratios": [ratio(a["per_s"], b["per_s"])
                                    for a, b in zip(on["runs"], off["runs"])],
            "request_statements": {name: _mean_counts([r["request_statements"]
                                                       for r in configs[name]["runs"]])
                                   for name in configs},
            "request_commits": {name: median([r["request_commits"] for r in configs[name]["runs"]])
                                for name in configs}}
    stats = out["log_stats"]["on"] or {}
    out["goals"] = {
        "log table empty after the run": rows_after == 0,
        "every PUT's row applied by its writer (the relay re-applied only older rows)":
            stats.get("recorded", -1) == stats.get("applied_by_writer") and
            stats.get("relayed") == rows_before,
        "no log with examcache.invalidation_log = false": out["log_stats"]["off"] is None,
    }
    return out
