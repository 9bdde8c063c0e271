"""Scenario 1: cached view throughput and latency with wrk (8 connections).

Every target is its own waitress process (same thread count), warmed, then
loaded one at a time; the rounds alternate between targets (A B C D E F, A B
…) and the medians of the rounds are reported.
"""
from __future__ import annotations

import re
import shutil
import subprocess

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


def run(env, quick: bool = False, rounds: int = 3, seconds: float = 5.0,
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
        for _ in range(rounds):
            for name, _app, path, _ in targets:
                runs[name].append(wrk(servers[name].base + path, seconds))
    finally:
        for server in servers.values():
            server.stop()
    result = {"connections": CONNECTIONS, "wrk_threads": WRK_THREADS, "server_threads": THREADS,
              "rounds": rounds, "seconds": seconds, "body_bytes": len(reference),
              "same_body": same, "targets": {}}
    for name, _app, path, label in targets:
        r = runs[name]
        result["targets"][name] = {
            "label": label, "path": path, "runs": r,
            "rps": median([x["rps"] for x in r]), "p50_ms": median([x["p50_ms"] for x in r]),
            "p99_ms": median([x["p99_ms"] for x in r]),
            "errors": sum(x["non2xx"] + x["socket_errors"] for x in r)}
    ours = result["targets"].get("ours", {}).get("rps")
    result["ratios"] = {name: ratio(ours, t["rps"]) for name, t in result["targets"].items()
                        if name != "ours"}
    result["goals"] = {
        "ours/seed >= 1.5": (result["ratios"].get("seed") or 0) >= 1.5,
        "ours/raw >= 0.9": (result["ratios"].get("raw") or 0) >= 0.9,
    }
    return result
