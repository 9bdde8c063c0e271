"""``python -m bench.profile_hit [--backend redis|memory] [--near-cache MODE] [--only ours] [--runs R]
[-n N] [--profile]``:
the CPU cost of one cached hit, in-process (no HTTP server, no wrk): ours vs
the raw-GET floor vs the seed vs fixed bytes, on the bench's private Redis and
database.  ``--backend memory`` runs ours on ``memory://`` (the Python around
the backend, without a Redis round trip).  Each case is measured ``--runs``
times and the median is printed last.  Where ``demo_app.main`` wraps the router in the
WSGI fast path (early hits on: ``--backend memory`` or ``--near-cache lease``), the
router alone is measured beside it as ``router`` (the early-hit tween's path).  With
``--profile`` pyinstrument prints where ours spends its time."""
from __future__ import annotations

import argparse
import statistics
import time

from webob import Request


def measure(app, path: str, n: int) -> float:
    environ = Request.blank(path).environ
    for _ in range(50):
        Request(dict(environ)).get_response(app)
    start = time.perf_counter()
    for _ in range(n):
        resp = Request(dict(environ)).get_response(app)
        assert resp.status_code == 200
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=3000, help="hits per run")
    parser.add_argument("--runs", type=int, default=2, help="runs per case (median printed)")
    parser.add_argument("--backend", choices=("redis", "memory"), default="redis",
                        help="ours on the private Redis (default) or on memory://")
    parser.add_argument("--near-cache", default=None,
                        help="examcache.near_cache for ours (default: the bench .ini's)")
    parser.add_argument("--only", choices=("ours", "all"), default="all")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    from pyramid.paster import get_appsettings

    from demo_app import main as demo_main

    from .env import environment
    from .peers.app import make_app

    with environment() as env:
        settings = dict(get_appsettings(env.ini))
        if args.backend == "memory":
            settings["examcache.redis_url"] = "memory://"
        if args.near_cache:
            settings["examcache.near_cache"] = args.near_cache
        ours = demo_main({}, **settings)
        cases = [("ours", ours, "/api/exams/1/questions")]
        router = getattr(ours, "router", None)  # the fast path's router: the tween's path
        if router is not None:
            cases.append(("router", router, "/api/exams/1/questions"))
        if args.only == "all":
            peers = make_app(dict(get_appsettings(env.ini)))
            cases += [("raw", peers, "/raw/exams/1/questions"),
                      ("seed", peers, "/seed/exams/1/questions"),
                      ("fixed", peers, "/fixed")]
        times: dict[str, list[float]] = {name: [] for name, _, _ in cases}
        for _ in range(args.runs):
            for name, app, path in cases:
                us = measure(app, path, args.n)
                times[name].append(us)
                print(f"{name:6s} {us:8.1f} us/request")
        for name, values in times.items():
            print(f"median {name:6s} {statistics.median(values):8.1f} us/request "
                  f"({args.backend if name in ('ours', 'router') else 'redis'}, {args.runs} x {args.n})")
        if args.profile:
            from pyinstrument import Profiler

            environ = Request.blank("/api/exams/1/questions").environ
            profiler = Profiler(interval=0.0002)
            profiler.start()
            for _ in range(args.n):
                Request(dict(environ)).get_response(ours)
            profiler.stop()
            print(profiler.output_text(unicode=False, color=False, show_all=False))


if __name__ == "__main__":
    main()
