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
"""
from __future__ import annotations

import argparse
import json
import os

from .env import environment
from .scenarios.throughput import measured_run
from .stats import median

PATH = "/api/exams/1/questions"
GOALS = {"rps_ratio": 0.9, "cluster_p99_ratio": 2.0}


def run(env, rounds: int, seconds: float) -> dict:
    from tests.topologies import PrivateCluster, PrivateSentinel

    sentinel, cluster = PrivateSentinel(), PrivateCluster()
    sentinel.start()
    cluster.start()
    try:
        inis = {"single": env.ini,
                "sentinel": env.write_ini("bench-sentinel.ini",
                                          **{"examcache.redis_url": sentinel.url}),
                "cluster": env.write_ini("bench-cluster.ini",
                                         **{"examcache.redis_url": cluster.url}),
                "cluster-check": env.write_ini("bench-cluster-check.ini",
                                               **{"examcache.redis_url": cluster.url,
                                                  "examcache.near_cache": "check"})}
        servers = {name: env.serve("ours", ini=ini, name=f"ours-{name}")
                   for name, ini in inis.items()}
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
                                               redis_pids[name]))
    finally:
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


def markdown(result: dict) -> list[str]:
    lines = ["## Topologies: hits on Sentinel and Cluster beside one Redis", "",
             f"`python -m bench.topology_hits`: wrk `-t2 -c8`, {result['rounds']} alternating "
             f"rounds of {result['seconds']:.0f} s, the demo's `GET {PATH}` (waitress 8 "
             "threads), default near cache (`barrier`) on each topology; `cluster-check` is the "
             "Cluster with `examcache.near_cache = check` (the default before).", "",
             "| target | req/s | × one Redis | p50 ms | p99 ms | p99 × one Redis | "
             "server CPU µs/req | non-2xx |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, s in result["summary"].items():
        r = result["ratios"][name]
        lines.append(f"| {name} | {s['rps']:,.0f} | {r['rps']:.2f} | {s['p50_ms']:.2f} | "
                     f"{s['p99_ms']:.2f} | {r['p99']:.2f} | {s['server_cpu_us']:.0f} | "
                     f"{s['non2xx']} |")
    ratios = result["ratios"]
    met = {"sentinel req/s >= 0.9x": ratios["sentinel"]["rps"] >= GOALS["rps_ratio"],
           "cluster req/s >= 0.9x": ratios["cluster"]["rps"] >= GOALS["rps_ratio"],
           "cluster p99 <= 2x": ratios["cluster"]["p99"] <= GOALS["cluster_p99_ratio"]}
    lines += [""] + [f"- goal {k}: **{'met' if v else 'missed'}**" for k, v in met.items()]
    return lines + [""]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.topology_hits", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/results-topology-hits")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    with environment() as env:
        result = run(env, args.rounds, args.seconds)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as fh:
        json.dump(result, fh, indent=1)
    text = "\n".join(markdown(result))
    with open(os.path.join(args.out, "RESULTS.md"), "w") as fh:
        fh.write(text)
    print(text)


if __name__ == "__main__":
    main()
