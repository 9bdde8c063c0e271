"""Scenario 1: cached view throughput and latency with wrk (8 connections).

Every target is its own waitress process (same thread count), warmed, then
loaded one at a time; the rounds alternate between targets (A B C D E F, A B
…) and the medians of the rounds are reported.

Ours runs four times, the same demo with the same tweens, settings differing only in the
near-cache mode: ``ours`` (``examcache.near_cache = check``, ``early_hits = false``: every hit
does one validating round trip, ``HMGET`` + the tag ``GET``s), ``ours-tracking`` (the
defaults, ``near_cache = barrier``: a held value is served after the shared ``PING``
barrier), ``ours-lease`` (``near_cache = lease``, ``early_hits = false``: no barrier, no
command) and ``ours-early`` (``near_cache = lease`` with its early hits answered by the tween
before pyramid_tm and the router).  Redis commands are counted per target and round (``CONFIG RESETSTAT`` before
each run, ``INFO commandstats`` after it).
"""
from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import time

from ..env import THREADS
from ..stats import median, ratio, sum_counts

CONNECTIONS = 8
WRK_THREADS = 2

#: (name, app, path, label)
TARGETS = (
    ("ours", "ours", "/api/exams/1/questions",
     "ours, `examcache.near_cache = check`, `early_hits = false` (one validating "
     "round trip per hit)"),
    ("ours-tracking", "ours", "/api/exams/1/questions",
     "**ours as shipped** (the defaults: `near_cache = barrier`, a shared PING barrier per "
     "read, no command per hit, early hits after the barrier)"),
    ("ours-lease", "ours", "/api/exams/1/questions",
     "ours, `near_cache = lease`, `early_hits = false` (no barrier, no command per hit)"),
    ("ours-early", "ours", "/api/exams/1/questions",
     "ours, `near_cache = lease` (read leases + early hits before pyramid_tm/router)"),
    ("seed", "peers", "/seed/exams/1/questions", "seed cache-aside (GET, json.loads, json.dumps)"),
    ("dogpile", "peers", "/dogpile/exams/1/questions", "dogpile.cache region, Redis backend"),
    ("raw", "peers", "/raw/exams/1/questions", "raw Redis GET returning the bytes (floor)"),
    ("fixed", "peers", "/fixed", "fixed bytes (framework ceiling)"),
    ("orm", "peers", "/orm/exams/1/questions", "uncached ORM query"),
    ("bare", "bare", "/api/exams/1/questions",
     "bare WSGI callable on waitress replaying the demo's cached response (same body, same "
     "headers): the server's ceiling"),
)

#: the targets that are ours, and the settings each adds to the bench's .ini
OURS = ("ours", "ours-tracking", "ours-lease", "ours-early")
SETTINGS = {
    "ours": {"examcache.near_cache": "check", "examcache.early_hits": "false"},
    "ours-tracking": {},  # the defaults: near_cache = barrier
    "ours-lease": {"examcache.near_cache": "lease", "examcache.early_hits": "false"},
    "ours-early": {"examcache.near_cache": "lease"},  # early hits follow
}
#: issue 11's goals: ours ÷ peer (req/s) at least
GOALS = (("fixed", 0.9), ("raw", 1.5), ("seed", 2.0), ("dogpile", 2.0),
         ("bare", 0.85))  # issue 22: >= 0.85x the bare server (and >= 1.5x raw, above)

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    if not m:
        raise ValueError(f"cannot parse wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> dict:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.M))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"rps": rps, "p50_ms": _ms(lat["50"]), "p99_ms": _ms(lat["99"]),
            "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": sum(map(int, errors.groups())) if errors else 0}


def wrk(url: str, seconds: float) -> dict:
    exe = shutil.which("wrk") or "/usr/bin/wrk"
    out = subprocess.run([exe, f"-t{WRK_THREADS}", f"-c{CONNECTIONS}", f"-d{max(1, round(seconds))}s",
                          "--latency", url], check=True, capture_output=True, text=True).stdout
    return parse_wrk(out)


def _system_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    idle = values[3] + values[4]
    return (sum(values) - idle) / hz, sum(values) / hz


def _process_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_quiet(limit: float = 0.15, patience: float = 20.0) -> float:
    """Wait (up to ``patience`` s) until the machine is nearly idle before a run:
    other work on a 2-core box moves req/s more than anything we measure.
    Returns the busy share seen last."""
    deadline = time.monotonic() + patience
    while True:
        b0, t0 = _system_busy()
        time.sleep(0.5)
        b1, t1 = _system_busy()
        share = (b1 - b0) / max(t1 - t0, 1e-9)
        if share <= limit or time.monotonic() >= deadline:
            return share
        time.sleep(1.0)


def measured_run(server, url: str, seconds: float, redis_pid: int, redis=None,
                 patience: float = 20.0) -> dict:
    """wrk plus CPU accounting: the server's and Redis's CPU per request, and the
    CPU used by anything else on the machine during the run (noise); with
    ``redis``, the Redis commands the run caused (``INFO commandstats``).  ``patience``:
    how long to wait for a quiet machine first (:func:`wait_quiet`)."""
    idle_share = wait_quiet(patience=patience)
    if redis is not None:
        redis.config_resetstat()
    s0, r0 = _process_cpu(server.proc.pid), _process_cpu(redis_pid)
    w0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    b0, _ = _system_busy()
    result = wrk(url, seconds)
    b1, _ = _system_busy()
    w1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    s1, r1 = _process_cpu(server.proc.pid), _process_cpu(redis_pid)
    requests = result["rps"] * max(1, round(seconds))
    if redis is not None:
        stats = {k.removeprefix("cmdstat_"): v for k, v in redis.info("commandstats").items()}
        stats = {k: v for k, v in stats.items()  # not our own INFO / CONFIG RESETSTAT
                 if v["calls"] and k != "info" and not k.startswith("config")}
        result["redis_usec"] = {k: v["usec"] for k, v in stats.items()}
        calls = result["redis_calls"] = {k: v["calls"] for k, v in stats.items()}
        result["redis_calls_per_req"] = sum(calls.values()) / requests if requests else None
    wrk_cpu = (w1.ru_utime + w1.ru_stime) - (w0.ru_utime + w0.ru_stime)
    result.update({
        "server_cpu_us": (s1 - s0) / requests * 1e6 if requests else None,
        "redis_cpu_us": (r1 - r0) / requests * 1e6 if requests else None,
        "other_cpu_s": round(max(0.0, (b1 - b0) - (s1 - s0) - (r1 - r0) - wrk_cpu), 2),
        "busy_before": round(idle_share, 3)})
    return result


def run(env, quick: bool = False, rounds: int | None = None, seconds: float | None = None,
        targets=None) -> dict:
    rounds, seconds = rounds or 5, seconds or 5.0
    if quick:
        rounds, seconds = 1, 1.0
    targets = [t for t in TARGETS if targets is None or t[0] in targets]
    servers = {}
    try:
        for name, app, path, _ in targets:
            if app != "bare":  # started once the demo's response is known
                ini = env.write_ini(f"{name}.ini", **SETTINGS[name]) if name in SETTINGS else None
                servers[name] = env.serve(app, ini=ini, name=name)
        bodies, responses = {}, {}
        for name, _app, path, _ in targets:  # warm each cache, check the data is the same
            if name == "bare":
                servers[name] = _serve_bare(env, bodies, responses)
            bodies[name], responses[name] = _warm(servers[name], path, name in OURS)
        reference = bodies.get("orm") or next(b for n, b in bodies.items() if n != "bare")
        same = {name: body == reference for name, body in bodies.items()}
        runs: dict[str, list[dict]] = {name: [] for name, *_ in targets}
        redis = env.redis()
        usec: dict[str, list[float]] = {}  # command -> [calls, usec] over every run
        for _ in range(rounds):
            for name, _app, path, _ in targets:
                runs[name].append(measured_run(servers[name], servers[name].base + path,
                                               seconds, env.redis_proc.pid, redis))
                for k, calls in runs[name][-1]["redis_calls"].items():
                    acc = usec.setdefault(k, [0, 0.0])
                    acc[0] += calls
                    acc[1] += runs[name][-1]["redis_usec"][k]
        commandstats = {k: {"calls": c, "usec_per_call": round(u / c, 2)}
                        for k, (c, u) in usec.items() if c >= 100}
    finally:
        for server in servers.values():
            server.stop()
    result = {"redis_commandstats": commandstats, "connections": CONNECTIONS, "wrk_threads": WRK_THREADS, "server_threads": THREADS,
              "rounds": rounds, "seconds": seconds, "body_bytes": len(reference),
              "same_body": same, "targets": {}}
    for name, _app, path, label in targets:
        r = runs[name]
        result["targets"][name] = {
            "label": label, "path": path, "runs": r,
            "rps": median([x["rps"] for x in r]), "p50_ms": median([x["p50_ms"] for x in r]),
            "p99_ms": median([x["p99_ms"] for x in r]),
            "server_cpu_us": median([x["server_cpu_us"] for x in r]),
            "redis_cpu_us": median([x["redis_cpu_us"] for x in r]),
            "redis_calls_per_req": median([x.get("redis_calls_per_req") for x in r]),
            "redis_calls": sum_counts(x.get("redis_calls") or {} for x in r),
            "requests": round(sum(x["rps"] for x in r) * max(1, round(seconds))),
            "other_cpu_s": [x["other_cpu_s"] for x in r],
            "errors": sum(x["non2xx"] + x["socket_errors"] for x in r)}
    # ratios_by[o][peer] = o's req/s ÷ peer's; cpu_ratios_by[o][peer] = peer's CPU/req ÷ o's
    result["ratios_by"], result["cpu_ratios_by"], result["goals"] = {}, {}, {}
    for o in OURS:
        if o not in result["targets"]:
            continue
        mine = result["targets"][o]
        result["ratios_by"][o] = {name: ratio(mine["rps"], t["rps"])
                                  for name, t in result["targets"].items() if name != o}
        result["cpu_ratios_by"][o] = {name: ratio(t["server_cpu_us"], mine["server_cpu_us"])
                                      for name, t in result["targets"].items() if name != o}
        # the same ratio per round (the rounds alternate: round i of o and of the peer ran
        # within one cycle of each other)
        result.setdefault("ratios_per_round", {})[o] = {
            name: [ratio(a["rps"], b["rps"]) for a, b in zip(mine["runs"], t["runs"])]
            for name, t in result["targets"].items() if name != o}
        for peer, goal in GOALS:
            if peer in result["targets"]:
                result["goals"][f"{o}/{peer} >= {goal:g}"] = (
                    (result["ratios_by"][o].get(peer) or 0) >= goal)
    # the historical fields: ours (tracking off) against every other target
    result["ratios"] = result["ratios_by"].get("ours", {})
    result["cpu_ratios"] = result["cpu_ratios_by"].get("ours", {})
    return result


def _warm(server, path: str, ours: bool) -> tuple[bytes, dict]:
    client = server.client()
    for _ in range(20):
        status, headers, body = client.request("GET", path)
        assert status == 200, (server.name, status, body[:200])
    client.close()
    if ours:
        assert headers.get("x-cache") == "HIT", headers
    return body, headers


def _serve_bare(env, bodies: dict, responses: dict):
    """Start the bare target replaying the demo's cached response (one of ours already
    warmed, else a demo on the defaults started for the purpose)."""
    from ..bare import save_response

    source = next((o for o in OURS if o in responses), None)
    if source is None:
        demo = env.serve("ours", name="bare-source")
        try:
            body, headers = _warm(demo, "/api/exams/1/questions", True)
        finally:
            demo.stop()
    else:
        body, headers = bodies[source], responses[source]
    path = os.path.join(env.workdir, "bare-response.json")
    save_response(path, body, headers)
    return env.serve("bare", name="bare", response=path)
