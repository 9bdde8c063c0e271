"""``python -m bench.topology_hits``: hit throughput on Sentinel and Cluster beside one Redis.

The demo's cached exam (``GET /api/exams/1/questions``, waitress 8 threads, wrk as in
scenario 1) is served by one process per topology, each with its default near cache
(``barrier``: tracking with a barrier per read; on Sentinel and Cluster fenced by the
primaries' identity, ``pyramid_examcache/cache/backends/fenced_near.py``), and, for
reference, the Cluster with ``check`` (each hit validated by a round trip, the default
before).  Sentinel (a primary, a replica, 3 sentinels) and Cluster (3 primaries) are private
ones started here (tests/topologies.py); one Redis is the bench's own.  Rounds alternate
between the targets.  Goals (issue 22): Sentinel and Cluster >= 0.9x one Redis's req/s,
Cluster p99 <= 2x one Redis's.  Run it from a snapshot clone::

    python -m bench.topology_hits --out bench/results-topology-hits

``python -m bench topology-hits`` (and ``all``) runs the same measurement (:func:`run`) in
the bench's run: a section of its report (:func:`bench_markdown`) and
``DIR/topology-hits.png`` (:func:`chart`).
"""
from __future__ import annotations

import argparse
import json
import os

from .charts import pyplot, save
from .env import environment
from .scenarios.throughput import measured_run
from .stats import median

PATH = "/api/exams/1/questions"
GOALS = {"rps_ratio": 0.9, "cluster_p99_ratio": 2.0}


def run(env, rounds: int | None = None, seconds: float | None = None,
        quick: bool = False) -> dict:
    """``rounds`` (default 3) alternating rounds of wrk for ``seconds`` (default 5) on each
    target; ``quick``: one round of 1 s, no waiting for a quiet machine (a smoke test)."""
    from tests.topologies import PrivateCluster, PrivateSentinel

    rounds, seconds, patience = rounds or 3, seconds or 5.0, 20.0
    if quick:
        rounds, seconds, patience = 1, 1.0, 0.0
    sentinel, cluster = PrivateSentinel(), PrivateCluster()
    sentinel.start()
    cluster.start()
    servers: dict = {}
    try:
        inis = {"single": env.ini,
                "sentinel": env.write_ini("bench-sentinel.ini",
                                          **{"examcache.redis_url": sentinel.url}),
                "cluster": env.write_ini("bench-cluster.ini",
                                         **{"examcache.redis_url": cluster.url}),
                "cluster-check": env.write_ini("bench-cluster-check.ini",
                                               **{"examcache.redis_url": cluster.url,
                                                  "examcache.near_cache": "check"})}
        for name, ini in inis.items():
            servers[name] = env.serve("ours", ini=ini, name=f"ours-{name}")
        redis_pids = {"single": env.redis_proc.pid,
                      "sentinel": sentinel.procs[sentinel.primary_port()].pid,
                      "cluster": cluster.procs[cluster.ports[0]].pid,
                      "cluster-check": cluster.procs[cluster.ports[0]].pid}
        for server in servers.values():  # warm: a miss, then hits held in the near cache
            client = server.client()
            for _ in range(5):
                client.json("GET", PATH)
            client.close()
        runs: dict[str, list] = {name: [] for name in servers}
        for _ in range(rounds):
            for name, server in servers.items():
                runs[name].append(measured_run(server, server.base + PATH, seconds,
                                               redis_pids[name], patience=patience))
    finally:
        for server in servers.values():  # (in `python -m bench all`, before what follows)
            server.stop()
        sentinel.close()
        cluster.close()
    summary = {name: {"rps": median([r["rps"] for r in rs]),
                      "p50_ms": median([r["p50_ms"] for r in rs]),
                      "p99_ms": median([r["p99_ms"] for r in rs]),
                      "server_cpu_us": median([r["server_cpu_us"] for r in rs]),
                      "non2xx": sum(r["non2xx"] for r in rs)}
               for name, rs in runs.items()}
    single = summary["single"]
    ratios = {name: {"rps": s["rps"] / single["rps"], "p99": s["p99_ms"] / single["p99_ms"]}
              for name, s in summary.items()}
    return {"rounds": rounds, "seconds": seconds, "runs": runs, "summary": summary,
            "ratios": ratios}


def markdown(result: dict, command: str = "python -m bench.topology_hits") -> list[str]:
    lines = ["## Topologies: hits on Sentinel and Cluster beside one Redis", "",
             f"`{command}`: wrk `-t2 -c8`, {result['rounds']} alternating "
             f"rounds of {result['seconds']:.0f} s, the demo's `GET {PATH}` (waitress 8 "
             "threads), default near cache (`barrier`) on each topology; `cluster-check` is the "
             "Cluster with `examcache.near_cache = check` (the default before).", "",
             "| target | req/s | rounds' req/s | × one Redis | p50 ms | p99 ms | p99 × one Redis | "
             "server CPU µs/req | non-2xx |", "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for name, s in result["summary"].items():
        r = result["ratios"][name]
        spread = " / ".join(f"{x['rps']:,.0f}" for x in result["runs"][name])
        lines.append(f"| {name} | {s['rps']:,.0f} | {spread} | {r['rps']:.2f} | "
                     f"{s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {r['p99']:.2f} | "
                     f"{s['server_cpu_us']:.0f} | {s['non2xx']} |")
    lines += [""] + [f"- goal {k}: **{'met' if v else 'missed'}**"
                     for k, v in goals(result["ratios"]).items()]
    return lines + [""]


def goals(ratios: dict) -> dict[str, bool]:
    """Each goal (:data:`GOALS`) met or not, by the ratios to one Redis."""
    return {"sentinel req/s >= 0.9x": ratios["sentinel"]["rps"] >= GOALS["rps_ratio"],
            "cluster req/s >= 0.9x": ratios["cluster"]["rps"] >= GOALS["rps_ratio"],
            "cluster p99 <= 2x": ratios["cluster"]["p99"] <= GOALS["cluster_p99_ratio"]}


def bench_markdown(s: dict, chart_path: str | None, report_dir: str) -> list[str]:
    """The ``topology-hits`` section of ``python -m bench``'s report (none if it did not
    run): :func:`markdown`'s table and goals, then the chart."""
    if "topology-hits" not in s:
        return []
    lines = markdown(s["topology-hits"], "python -m bench topology-hits")
    if chart_path:
        lines += [f"![topology hits]({os.path.relpath(chart_path, report_dir)})", ""]
    return lines


def chart(result: dict, path: str) -> str:
    """req/s (rounds as dots; the goal: 0.9x one Redis) and p99 (the goal: 2x one Redis's)
    of each target side by side; ``path``."""
    names = list(result["summary"])
    summary, single = result["summary"], result["summary"]["single"]
    fig, (left, right) = pyplot().subplots(1, 2, figsize=(9, 3.8), dpi=110)
    left.bar(names, [summary[n]["rps"] for n in names], color="#1f77b4")
    for i, n in enumerate(names):
        left.scatter([i] * len(result["runs"][n]), [r["rps"] for r in result["runs"][n]],
                     color="black", s=8, zorder=3)
        left.annotate(f"{result['ratios'][n]['rps']:.2f}×", (i, summary[n]["rps"]),
                      xytext=(0, 3), textcoords="offset points", ha="center", fontsize=8)
    left.axhline(GOALS["rps_ratio"] * single["rps"], color="grey", linestyle="--",
                 linewidth=0.8, label=f"goal: {GOALS['rps_ratio']:g}× one Redis")
    left.set_ylabel("requests/s (median of rounds; dots = rounds)")
    right.bar(names, [summary[n]["p99_ms"] for n in names], color="#ff7f0e")
    for i, n in enumerate(names):
        right.annotate(f"{result['ratios'][n]['p99']:.2f}×", (i, summary[n]["p99_ms"]),
                       xytext=(0, 3), textcoords="offset points", ha="center", fontsize=8)
    right.axhline(GOALS["cluster_p99_ratio"] * single["p99_ms"], color="grey", linestyle="--",
                  linewidth=0.8, label=f"goal (cluster): {GOALS['cluster_p99_ratio']:g}× one Redis")
    right.set_ylabel("p99 latency, ms")
    left.set_ylim(0, 1.25 * max(r["rps"] for rs in result["runs"].values() for r in rs))
    right.set_ylim(0, 1.25 * max(GOALS["cluster_p99_ratio"] * single["p99_ms"],
                                 *(summary[n]["p99_ms"] for n in names)))
    for ax in (left, right):
        ax.tick_params(axis="x", labelsize=8)
        ax.legend(fontsize=7, loc="upper right")
    fig.suptitle(f"GET {PATH} per topology (×: ratio to one Redis)", fontsize=9)
    return save(fig, path)


def backend_profile(seconds: float = 3.0, threads: int = 8, rounds: int = 3,
                    work_us: float = 0.0) -> dict:
    """Where a hit's time goes below the web stack: each topology's backend serving one
    held 46 KB value to ``threads`` threads (``get``, no HTTP): hits/s, process CPU per hit,
    and the fence's I/O per hit (``PING`` barriers sent, probes sent with them).  With
    ``work_us``, each thread first spends that much Python CPU per hit (a stand-in for the
    web stack: the threads then contend for the GIL as a server's do)."""
    import statistics
    import threading
    import time

    from pyramid_examcache.cache.backends.cluster import ClusterBackend
    from pyramid_examcache.cache.backends.redis import RedisBackend
    from tests.conftest import PrivateRedis
    from tests.topologies import PrivateCluster, PrivateSentinel, poll

    tags = ("exam:1", "@key:exam:1:questions")

    def counters(backend) -> tuple[int, int]:
        near = getattr(backend, "_tracked_near", None) or backend._near
        stream = near.stream
        streams = list(stream.streams.values()) if hasattr(stream, "streams") else [stream]
        return (sum(s.pings_sent for s in streams),  # (probes: INFO replication, one per
                sum(s.probes_sent for s in streams))  # PING on Sentinel and Cluster)

    def measure(backend) -> tuple[float, float, float, float]:
        found = backend.lookup("k", "t1", 5, 600, tags)
        backend.fill("k", "t1", b"x" * 46000, 600, tags, found.versions)
        poll(lambda: backend.get("k", tags) is not None and backend.near_cache_bytes() > 0,
             10, "the value held")
        stop, counts = threading.Event(), [0] * threads

        def reader(i: int) -> None:
            while not stop.is_set():
                if work_us:
                    busy(work_us)
                backend.get("k", tags)
                counts[i] += 1

        workers = [threading.Thread(target=reader, args=(i,)) for i in range(threads)]
        (p0, r0), c0, t0 = counters(backend), time.process_time(), time.monotonic()
        for w in workers:
            w.start()
        time.sleep(seconds)
        stop.set()
        for w in workers:
            w.join()
        n, (p1, r1) = sum(counts), counters(backend)
        return (n / (time.monotonic() - t0), (time.process_time() - c0) / n * 1e6,
                (p1 - p0) / n, (r1 - r0) / n)

    single, sentinel, cluster = PrivateRedis(), PrivateSentinel(), PrivateCluster()
    for server in (single, sentinel, cluster):
        server.start()
    try:
        near = {"near_cache_bytes": 32 << 20, "tracking": True}
        backends = {"single": RedisBackend(single.url, prefix="p:", **near),
                    "sentinel": RedisBackend(sentinel.url, prefix="p:", **near),
                    "cluster": ClusterBackend(cluster.url, prefix="p:", **near)}
        samples: dict[str, list] = {name: [] for name in backends}
        for _ in range(rounds):
            for name, backend in backends.items():
                samples[name].append(measure(backend))
        for backend in backends.values():
            backend.close()
    finally:
        single.stop()
        sentinel.close()
        cluster.close()
    keys = ("hits_per_s", "cpu_us_per_hit", "pings_per_hit", "probes_per_hit")
    # (rounds alternate between the topologies: compare within one run)
    return {name: {k: round(statistics.median(s[i] for s in rows), 3)
                   for i, k in enumerate(keys)} for name, rows in samples.items()}


def busy(us: float) -> None:
    """Spend ``us`` microseconds of Python CPU (holding the GIL)."""
    import time

    end = time.perf_counter() + us / 1e6
    while time.perf_counter() < end:
        pass


def profile_markdown(profile: dict, work_us: float = 0.0) -> list[str]:
    work = f", each after {work_us:.0f} µs of Python CPU (`--work`)" if work_us else ""
    lines = ["### Below the web stack (`--backend-profile`)", "",
             f"8 threads calling the backend's `get` on one held 46 KB value (no HTTP){work}.",
             "", "| topology | hits/s | × one Redis | CPU µs/hit | PINGs/hit | probes/hit |",
             "|---|---:|---:|---:|---:|---:|"]
    single = profile["single"]["hits_per_s"]
    for name, p in profile.items():
        lines.append(f"| {name} | {p['hits_per_s']:,.0f} | {p['hits_per_s'] / single:.2f} | "
                     f"{p['cpu_us_per_hit']:.0f} | {p['pings_per_hit']:.2f} | "
                     f"{p['probes_per_hit']:.2f} |")
    return lines + [""]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.topology_hits", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/results-topology-hits")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--backend-profile", action="store_true",
                        help="only the backend-level profile (no HTTP, no database)")
    parser.add_argument("--work", type=float, default=0.0,
                        help="with --backend-profile: µs of Python CPU per hit (the web "
                             "stack's stand-in), e.g. 300")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.backend_profile:
        profile = backend_profile(rounds=args.rounds, work_us=args.work)
        with open(os.path.join(args.out, "profile.json"), "w") as fh:
            json.dump(profile, fh, indent=1)
        print("\n".join(profile_markdown(profile, args.work)))
        return
    with environment() as env:
        result = run(env, args.rounds, args.seconds)
    with open(os.path.join(args.out, "results.json"), "w") as fh:
        json.dump(result, fh, indent=1)
    text = "\n".join(markdown(result))
    with open(os.path.join(args.out, "RESULTS.md"), "w") as fh:
        fh.write(text)
    print(text)


if __name__ == "__main__":
    main()
