"""Scenarios 8 and 9: the cached view as an HTTP cache.

8. ``logged-in`` -- readers that all send ``Authorization: Bearer <token>`` on
   ``GET /api/exams/1/questions`` (declared ``cache_public=True``) vs anonymous
   readers.  *Hit ratio*: the key is made cold (the entry's implicit tag
   deleted, as a PUT would), then 8 threads with 8 different tokens (or none)
   send 250 requests each and the ``X-Cache`` answers are counted.  *req/s*:
   wrk with one token (``-H Authorization``) and without, alternating rounds.
   Before this release a logged-in request never filled the shared key: with
   logged-in readers only, the hit ratio was 0 %.
9. ``revalidate`` -- clients that revalidate with ``If-None-Match: <etag>`` (and
   get ``304`` with no body) vs plain GETs of the same URL (``200`` with the
   47 kB body), alternating wrk rounds: req/s, bytes the server sent per
   response (wrk's ``Transfer/sec`` ÷ req/s: status line, headers and body),
   the waitress process's CPU per request, and the bytes Redis sent per request
   (``INFO stats`` ``total_net_output_bytes``; with the near cache a hit only
   fetches the fill stamp and tag versions).
"""
from __future__ import annotations

import re
import shutil
import subprocess
import threading
from contextlib import contextmanager

from ..stats import median, ratio
from .throughput import CONNECTIONS, WRK_THREADS, _process_cpu, parse_wrk, wait_quiet

PATH = "/api/exams/1/questions"
TAG_KEY = "examcache:t:@key:exam:1:questions"
THREADS = 8
PER_THREAD = 250
_UNITS = {"B": 1, "KB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3}


def _transfer(out: str) -> float:
    m = re.search(r"Transfer/sec:\s+([\d.]+)(B|KB|MB|GB)", out)
    return float(m.group(1)) * _UNITS[m.group(2)] if m else 0.0


def wrk(url: str, seconds: float, headers: dict[str, str]) -> dict:
    exe = shutil.which("wrk") or "/usr/bin/wrk"
    args = [exe, f"-t{WRK_THREADS}", f"-c{CONNECTIONS}", f"-d{max(1, round(seconds))}s", "--latency"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    out = subprocess.run([*args, url], check=True, capture_output=True, text=True).stdout
    result = parse_wrk(out)
    result["bytes_per_response"] = _transfer(out) / result["rps"] if result["rps"] else None
    return result


def measured(server, redis, headers: dict, seconds: float) -> dict:
    busy = wait_quiet()
    s0 = _process_cpu(server.proc.pid)
    n0 = redis.info("stats")["total_net_output_bytes"]
    result = wrk(server.base + PATH, seconds, headers)
    n1 = redis.info("stats")["total_net_output_bytes"]
    s1 = _process_cpu(server.proc.pid)
    requests = result["rps"] * max(1, round(seconds))
    result.update({"server_cpu_us": (s1 - s0) / requests * 1e6 if requests else None,
                   "redis_bytes_per_request": (n1 - n0) / requests if requests else None,
                   "busy_before": round(busy, 3)})
    return result


def hit_ratio(server, redis, headers_for) -> dict:
    """Cold key, then THREADS x PER_THREAD requests; ``headers_for(i)`` per thread."""
    redis.delete(TAG_KEY)
    caches: list[str] = []
    statuses: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(THREADS)

    def work(i: int) -> None:
        client = server.client()
        mine, codes = [], []
        client.connect()
        barrier.wait()
        for _ in range(PER_THREAD):
            status, headers, _ = client.request("GET", PATH, headers=headers_for(i))
            codes.append(status)
            mine.append(headers.get("x-cache"))
        client.close()
        with lock:
            caches.extend(mine)
            statuses.extend(codes)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    n = len(caches)
    return {"requests": n, "hits": caches.count("HIT"), "misses": caches.count("MISS"),
            "hit_ratio": caches.count("HIT") / n if n else None,
            "non_200": sum(s != 200 for s in statuses)}


def _tokens(env, server, n: int) -> list[str]:
    """``n`` distinct valid tokens (the teacher logging in from n devices)."""
    from demo_app.security import make_login_token

    secret = env.settings()["demo.secret"]
    token = env.login(server)
    uid = int(token.split(".")[0])
    return [make_login_token(secret, uid, 3600 + i) for i in range(n)]


def _summary(runs: list[dict]) -> dict:
    keys = ("rps", "p50_ms", "p99_ms", "server_cpu_us", "bytes_per_response",
            "redis_bytes_per_request")
    return {**{k: median([r[k] for r in runs]) for k in keys}, "runs": runs,
            "errors": sum(r["non2xx"] + r["socket_errors"] for r in runs)}


@contextmanager
def _served(env, name: str):
    """(the demo served as ``ours`` under ``name``, the bench's Redis); stopped on leaving."""
    server = env.serve("ours", name=name)
    try:
        yield server, env.redis()
    finally:
        server.stop()


def _alternating(server, redis, variants: dict[str, dict], rounds: int,
                 seconds: float) -> dict[str, list]:
    """``rounds`` wrk runs of each variant (name: its request headers), alternating."""
    runs: dict[str, list] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, headers in variants.items():
            runs[name].append(measured(server, redis, headers, seconds))
    return runs


def run_logged_in(env, quick: bool = False, rounds: int = 5, seconds: float = 5.0) -> dict:
    if quick:
        rounds, seconds = 1, 1.0
    with _served(env, "logged-in") as (server, redis):
        tokens = _tokens(env, server, THREADS)
        auth = [{"Authorization": f"Bearer {t}"} for t in tokens]
        ratios = {"logged-in": hit_ratio(server, redis, lambda i: auth[i]),
                  "anonymous": hit_ratio(server, redis, lambda i: {})}
        runs = _alternating(server, redis, {"logged-in": auth[0], "anonymous": {}}, rounds,
                            seconds)
    out = {"threads": THREADS, "per_thread": PER_THREAD, "rounds": rounds, "seconds": seconds,
           "connections": CONNECTIONS, "hit_ratio": ratios,
           "wrk": {name: _summary(r) for name, r in runs.items()}}
    out["rps_ratio"] = ratio(out["wrk"]["logged-in"]["rps"], out["wrk"]["anonymous"]["rps"])
    out["goals"] = {"logged-in hit ratio >= 0.99": ratios["logged-in"]["hit_ratio"] >= 0.99,
                    "no errors": not any(x["non_200"] for x in ratios.values())
                    and not any(s["errors"] for s in out["wrk"].values())}
    return out


def run_revalidate(env, quick: bool = False, rounds: int = 5, seconds: float = 5.0) -> dict:
    if quick:
        rounds, seconds = 1, 1.0
    with _served(env, "revalidate") as (server, redis):
        client = server.client()
        for _ in range(3):
            status, headers, body = client.request("GET", PATH)
        assert status == 200 and headers["x-cache"] == "HIT", (status, headers)
        etag = headers["etag"]
        status, h304, body304 = client.request("GET", PATH, headers={"If-None-Match": etag})
        client.close()
        assert status == 304 and body304 == b"", (status, body304[:100])
        runs = _alternating(server, redis, {"plain GET": {}, "If-None-Match": {
            "If-None-Match": etag}}, rounds, seconds)
    out = {"rounds": rounds, "seconds": seconds, "connections": CONNECTIONS, "etag": etag,
           "body_bytes": len(body), "wrk": {name: _summary(r) for name, r in runs.items()},
           "headers_304": sorted(h304)}
    plain, cond = out["wrk"]["plain GET"], out["wrk"]["If-None-Match"]
    out["rps_ratio"] = ratio(cond["rps"], plain["rps"])
    out["bytes_ratio"] = ratio(cond["bytes_per_response"], plain["bytes_per_response"])
    out["goals"] = {"304 sends < 2% of the 200's bytes": (out["bytes_ratio"] or 1) < 0.02,
                    "no errors": not plain["errors"] and not cond["errors"]}
    return out


def markdown(s: dict) -> list[str]:
    lines: list[str] = []
    if "logged-in" in s:
        t = s["logged-in"]
        lines += ["## 8. Logged-in readers of a public view (`cache_public=True`)", "",
                  f"`GET {PATH}`. Hit ratio: the key made cold, then {t['threads']} threads × "
                  f"{t['per_thread']} requests, each thread with its own bearer token (or none). "
                  f"req/s: wrk `-t{WRK_THREADS} -c{t['connections']} -d{t['seconds']:g}s` with one "
                  f"token (`-H Authorization`) or none, {t['rounds']} alternating rounds (medians). "
                  "Before this release a logged-in request never filled the shared key, so with "
                  "logged-in readers only every request loaded from PostgreSQL (0 % hits, by that "
                  "release's rule; not re-measured here).", "",
                  "| readers | requests | HITs | MISSes | hit ratio | req/s | p50 ms | p99 ms | "
                  "server CPU µs/req | req/s per round |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for name in ("logged-in", "anonymous"):
            h, w = t["hit_ratio"][name], t["wrk"][name]
            lines.append(f"| **{name}** | {h['requests']} | {h['hits']} | {h['misses']} | "
                         f"{h['hit_ratio'] * 100:.2f} % | {w['rps']:,.0f} | {w['p50_ms']:.2f} | "
                         f"{w['p99_ms']:.2f} | {w['server_cpu_us']:,.0f} | "
                         + ", ".join(f"{r['rps']:,.0f}" for r in w["runs"]) + " |")
        lines += ["", f"logged-in ÷ anonymous req/s: **{t['rps_ratio']:.3f}×**. For a view "
                  "declared public the add-on never asks the security policy who is calling, and "
                  "the demo's view does not either, so a logged-in hit costs what an anonymous "
                  "one does.", ""]
        lines += [f"- goal {k}: **{'met' if v else 'MISSED'}**" for k, v in t["goals"].items()]
        lines += [""]
    if "revalidate" in s:
        t = s["revalidate"]
        lines += ["## 9. Revalidation: `If-None-Match` → `304` vs plain GETs", "",
                  f"`GET {PATH}` (body {t['body_bytes']:,} bytes), warm; wrk "
                  f"`-t{WRK_THREADS} -c{t['connections']} -d{t['seconds']:g}s`, plain or with "
                  f"`-H 'If-None-Match: {t['etag']}'`, {t['rounds']} alternating rounds "
                  "(medians). Bytes sent = wrk's Transfer/sec ÷ req/s (status line, headers and "
                  "body); Redis bytes = `total_net_output_bytes` of the private redis-server ÷ "
                  "requests.", "",
                  "| clients | req/s | p50 ms | p99 ms | bytes sent per response | Redis bytes "
                  "per request | server CPU µs/req | req/s per round |",
                  "|---|---:|---:|---:|---:|---:|---:|---|"]
        for name in ("plain GET", "If-None-Match"):
            w = t["wrk"][name]
            lines.append(f"| **{name}** | {w['rps']:,.0f} | {w['p50_ms']:.2f} | {w['p99_ms']:.2f} | "
                         f"{w['bytes_per_response']:,.0f} | {w['redis_bytes_per_request']:,.0f} | "
                         f"{w['server_cpu_us']:,.0f} | "
                         + ", ".join(f"{r['rps']:,.0f}" for r in w["runs"]) + " |")
        lines += ["", f"304 ÷ 200: req/s **{t['rps_ratio']:.3f}×**, bytes sent "
                  f"**{t['bytes_ratio']:.4f}×**. The 304's headers: "
                  f"{', '.join(t['headers_304'])}. Redis bytes per request: with the near cache "
                  "(on by default) a warm hit fetches only the fill stamp and tag versions, never "
                  "the value's bytes, whether it ends in a 200 or a 304.", ""]
        lines += [f"- goal {k}: **{'met' if v else 'MISSED'}**" for k, v in t["goals"].items()]
        lines += [""]
    return lines
