"""Scenario 1: cached view throughput and latency with wrk (8 connections).

Every target is its own waitress process (same thread count), warmed, then
loaded one at a time; the rounds alternate between targets (A B C D E F, A B
…) and the medians of the rounds are reported.
"""
from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import time

from ..env import THREADS
from ..stats import median, ratio

CONNECTIONS = 8
WRK_THREADS = 2

#: (name, app, path, label)
TARGETS = (
    ("ours", "ours", "/api/exams/1/questions", "ours (pyramid_examcache cached view)"),
    ("seed", "peers", "/seed/exams/1/questions", "seed cache-aside (GET, json.loads, json.dumps)"),
    ("dogpile", "peers", "/dogpile/exams/1/questions", "dogpile.cache region, Redis backend"),
    ("raw", "peers", "/raw/exams/1/questions", "raw Redis GET returning the bytes (floor)"),
    ("fixed", "peers", "/fixed", "fixed bytes (framework ceiling)"),
    ("orm", "peers", "/orm/exams/1/questions", "uncached ORM query"),
)

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


def measured_run(server, url: str, seconds: float, redis_pid: int) -> dict:
    """wrk plus CPU accounting: the server's and Redis's CPU per request, and the
    CPU used by anything else on the machine during the run (noise)."""
    idle_share = wait_quiet()
    s0, r0 = _process_cpu(server.proc.pid), _process_cpu(redis_pid)
    w0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    b0, _ = _system_busy()
    result = wrk(url, seconds)
    b1, _ = _system_busy()
    w1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    s1, r1 = _process_cpu(server.proc.pid), _process_cpu(redis_pid)
    requests = result["rps"] * max(1, round(seconds))
    wrk_cpu = (w1.ru_utime + w1.ru_stime) - (w0.ru_utime + w0.ru_stime)
    result.update({
        "server_cpu_us": (s1 - s0) / requests * 1e6 if requests else None,
        "redis_cpu_us": (r1 - r0) / requests * 1e6 if requests else None,
        "other_cpu_s": round(max(0.0, (b1 - b0) - (s1 - s0) - (r1 - r0) - wrk_cpu), 2),
        "busy_before": round(idle_share, 3)})
    return result


def run(env, quick: bool = False, rounds: int = 5, seconds: float = 5.0,
        targets=None) -> dict:
    if quick:
        rounds, seconds = 1, 1.0
    targets = [t for t in TARGETS if targets is None or t[0] in targets]
    servers = {}
    try:
        for name, app, path, _ in targets:
            servers[name] = env.serve(app, name=name)
        bodies = {}
        for name, _app, path, _ in targets:  # warm each cache, check the data is the same
            client = servers[name].client()
            for _ in range(20):
                status, headers, body = client.request("GET", path)
                assert status == 200, (name, status, body[:200])
            client.close()
            if name == "ours":
                assert headers.get("x-cache") == "HIT", headers
            bodies[name] = body
        reference = bodies.get("orm") or bodies.get("ours")
        same = {name: body == reference for name, body in bodies.items()}
        runs: dict[str, list[dict]] = {name: [] for name, *_ in targets}
        redis = env.redis()
        redis.config_resetstat()
        for _ in range(rounds):
            for name, _app, path, _ in targets:
                runs[name].append(measured_run(servers[name], servers[name].base + path,
                                               seconds, env.redis_proc.pid))
        commandstats = {k.removeprefix("cmdstat_"): {"calls": v["calls"],
                                                      "usec_per_call": v["usec_per_call"]}
                        for k, v in redis.info("commandstats").items() if v["calls"] >= 100}
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
            "other_cpu_s": [x["other_cpu_s"] for x in r],
            "errors": sum(x["non2xx"] + x["socket_errors"] for x in r)}
    ours = result["targets"].get("ours", {}).get("rps")
    result["ratios"] = {name: ratio(ours, t["rps"]) for name, t in result["targets"].items()
                        if name != "ours"}
    ours_cpu = result["targets"].get("ours", {}).get("server_cpu_us")
    result["cpu_ratios"] = {name: ratio(t["server_cpu_us"], ours_cpu)
                            for name, t in result["targets"].items() if name != "ours"}
    result["goals"] = {
        "ours/seed >= 1.5": (result["ratios"].get("seed") or 0) >= 1.5,
        "ours/raw >= 0.9": (result["ratios"].get("raw") or 0) >= 0.9,
    }
    return result
