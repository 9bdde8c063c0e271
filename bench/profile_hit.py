"""``python -m bench.profile_hit [--profile]``: the CPU cost of one cached hit,
in-process (no HTTP server, no wrk): ours vs the raw-GET floor vs the seed vs
fixed bytes, on the bench's private Redis and database.  With ``--profile``
pyinstrument prints where ours spends its time."""
from __future__ import annotations

import argparse
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
    parser.add_argument("-n", type=int, default=3000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    from pyramid.paster import get_appsettings

    from demo_app import main as demo_main

    from .env import environment
    from .peers.app import make_app

    with environment() as env:
        settings = dict(get_appsettings(env.ini))
        ours = demo_main({}, **settings)
        peers = make_app(dict(get_appsettings(env.ini)))
        cases = [("ours", ours, "/api/exams/1/questions"),
                 ("raw", peers, "/raw/exams/1/questions"),
                 ("seed", peers, "/seed/exams/1/questions"),
                 ("fixed", peers, "/fixed")]
        for _ in range(2):
            for name, app, path in cases:
                print(f"{name:6s} {measure(app, path, args.n):8.1f} us/request")
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
