"""Scenario ``cluster``: the cached view on a 3-primary Redis Cluster, next to one Redis.

The demo (``ours``) is served twice -- ``examcache.redis_url`` = the bench's redis-server,
and = ``redis+cluster://`` on a private 3-node cluster started here (tests/topologies.py) --
and loaded with wrk as in scenario 1 (rounds alternate).  During the cluster runs every
node's ``INFO commandstats`` is read (after ``CONFIG RESETSTAT``): how the hit path's
commands -- the value's ``HMGET`` and one ``GET`` per tag version -- spread over the nodes
(the hot-tag question: a tag read on every hit lands on the one node that owns its slot).
"""
from __future__ import annotations

import redis

from ..stats import median
from .throughput import _process_cpu, measured_run

PATH = "/api/exams/1/questions"


def _commandstats(port: int) -> dict[str, dict]:
    stats = redis.Redis(port=port).info("commandstats")
    return {k.removeprefix("cmdstat_"): v for k, v in stats.items()}


def run(env, quick: bool = False, rounds: int = 3, seconds: float = 5.0) -> dict:
    from tests.topologies import PrivateCluster

    if quick:
        rounds, seconds = 1, 1.0
    cluster = PrivateCluster()
    cluster.start()
    try:
        ini = env.write_ini("bench-cluster.ini", **{"examcache.redis_url": cluster.url})
        servers = {"single": env.serve("ours", name="ours-single"),
                   "cluster": env.serve("ours", ini=ini, name="ours-cluster")}
        for server in servers.values():  # warm
            client = server.client()
            for _ in range(3):
                client.json("GET", PATH)
            client.close()
        runs: dict[str, list] = {"single": [], "cluster": []}
        per_node: list[dict] = []
        for _ in range(rounds):
            for name, server in servers.items():
                url = server.base + PATH
                if name == "single":
                    runs[name].append(measured_run(server, url, seconds, env.redis_proc.pid))
                    continue
                for port in cluster.ports:
                    redis.Redis(port=port).config_resetstat()
                cpu0 = {p: _process_cpu(cluster.procs[p].pid) for p in cluster.ports}
                result = measured_run(server, url, seconds, cluster.procs[cluster.ports[0]].pid)
                cpu = {p: _process_cpu(cluster.procs[p].pid) - cpu0[p] for p in cluster.ports}
                requests = result["rps"] * max(1, round(seconds))
                result["redis_cpu_us"] = sum(cpu.values()) / requests * 1e6 if requests else None
                runs[name].append(result)
                nodes = {}
                for port in cluster.ports:
                    stats = _commandstats(port)
                    nodes[port] = {"calls": {c: stats[c]["calls"] for c in ("get", "hmget", "evalsha")
                                             if c in stats},
                                   "cpu_us_per_req": round(cpu[port] / requests * 1e6, 1)}
                per_node.append(nodes)
        probe = _hot_path_nodes(cluster)
    finally:
        cluster.close()
    return {"runs": runs, "per_node": per_node, "hot_path": probe,
            "summary": {name: {"rps": median([r["rps"] for r in rs]),
                               "p50_ms": median([r["p50_ms"] for r in rs]),
                               "p99_ms": median([r["p99_ms"] for r in rs]),
                               "redis_cpu_us": median([r["redis_cpu_us"] for r in rs]),
                               "non2xx": sum(r["non2xx"] for r in rs)}
                        for name, rs in runs.items()}}


def _hot_path_nodes(cluster) -> dict:
    """Which node owns the value and each tag version the hit path reads."""
    from ..env import ORIGIN, PREFIX

    names = {"value": f"{PREFIX}v:{{@view:exam:1:questions{ORIGIN}}}",
             "tag exam:1": f"{PREFIX}t:exam:1", "tag @key:exam:1:questions":
             f"{PREFIX}t:@key:exam:1:questions"}
    return {label: cluster.node_of(name) for label, name in names.items()}


def markdown(s: dict) -> list[str]:
    if "cluster" not in s:
        return []
    c = s["cluster"]
    single, cluster = c["summary"]["single"], c["summary"]["cluster"]
    lines = ["## Cluster: the cached view on a 3-primary Redis Cluster", "",
             f"wrk `-t2 -c8`, {len(c['runs']['cluster'])} alternating rounds, the demo's "
             f"`GET {PATH}` (waitress 8 threads) with `examcache.redis_url` on one Redis and on "
             "`redis+cluster://` (3 primaries, no replicas, on this machine).", "",
             "| topology | req/s | p50 ms | p99 ms | Redis CPU µs/req (all nodes) | non-2xx |",
             "|---|---:|---:|---:|---:|---:|"]
    for label, x in (("one Redis", single), ("Redis Cluster, 3 primaries", cluster)):
        lines.append(f"| {label} | {x['rps']:,.0f} | {x['p50_ms']:.2f} | {x['p99_ms']:.2f} | "
                     f"{x['redis_cpu_us']:.0f} | {x['non2xx']} |")
    lines += ["", "Hot path on the cluster -- which node owns what a hit reads: " +
              ", ".join(f"{k} → :{v}" for k, v in c["hot_path"].items()) + ".", "",
              "| node | GET calls (tag versions) | HMGET calls (values) | EVALSHA | Redis CPU µs/req |",
              "|---|---:|---:|---:|---:|"]
    last = c["per_node"][-1]
    for port, node in last.items():
        calls = node["calls"]
        lines.append(f"| :{port} | {calls.get('get', 0):,} | {calls.get('hmget', 0):,} | "
                     f"{calls.get('evalsha', 0):,} | {node['cpu_us_per_req']} |")
    lines += ["", "(last round; `INFO commandstats` of each node after `CONFIG RESETSTAT`.)", ""]
    return lines
