"""The item app (:mod:`.itemapp`) with a window on its own cache, for the read-lease fault
tests (tests/cache/test_lease_faults.py): one of their waitress worker processes.

``GET /_state`` answers, without touching Redis or the database: the policy's counters
(``request.cache.stats()``), whether this process holds a valid read lease, its reader id,
its lease writer's counters and how long each of its commit-time invalidations took
(``policy.invalidate_now``, timed around the call, retries included). ``POST /_reset``
forgets those durations. Everything else goes to the item app.

Run as ``python -m tests.cache.faultapp`` with :mod:`.itemapp`'s arguments.
"""
from __future__ import annotations

import faulthandler
import json
import signal
import sys
import threading
import time

from pyramid_examcache.cache import get_policy

from . import itemapp


class Window:
    """WSGI middleware: ``/_state`` and ``/_reset`` here, the rest to ``app``."""

    def __init__(self, app) -> None:
        self.app = app
        self.policy = get_policy(app.registry)
        self.lock = threading.Lock()
        self.invalidations: list[dict] = []
        real = self.policy.invalidate_now

        def timed(keys=(), tags=(), *args, **kwargs):
            n = sum(len(x) if hasattr(x, "__len__") else 1 for x in (keys, tags))
            if not n:  # a commit that changed nothing cacheable
                return real(keys, tags, *args, **kwargs)
            started = time.monotonic()
            applied = None
            try:
                applied = real(keys, tags, *args, **kwargs)
                return applied
            finally:
                with self.lock:
                    self.invalidations.append({"at": started, "n": n,
                                               "ms": (time.monotonic() - started) * 1000,
                                               "applied": applied})

        self.policy.invalidate_now = timed  # the commit hooks call it on the instance

    def state(self) -> dict:
        backend = self.policy.backend
        lease = getattr(backend, "_lease", None)
        writer = getattr(backend, "_writer", None)
        with self.lock:
            invalidations = list(self.invalidations)
        return {
            "stats": self.policy.stats.snapshot(),
            "lease_valid": bool(getattr(backend, "read_lease_valid", lambda: False)()),
            "reader_id": getattr(lease, "id", None),
            "writer": {"waits": getattr(writer, "waits", None),
                       "gave_up": getattr(writer, "gave_up", None)},
            "deferred_pending": bool(self.policy.deferred),
            "invalidations": invalidations,
            "now": time.monotonic(),
        }

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/_state":
            body = json.dumps(self.state()).encode()
        elif path == "/_reset":
            with self.lock:
                self.invalidations.clear()
            body = b"{}"
        else:
            return self.app(environ, start_response)
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body]


def main() -> None:
    import argparse

    import waitress

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--setting", action="append", default=[], help="key=value")
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.setting)
    app = itemapp.make_app(args.db, **{"examcache.redis_url": args.redis,
                                       "examcache.key_prefix": args.prefix, **extra})
    # SIGUSR1: every thread's stack to the log (a test that sees the process hang asks)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    # SIGINT stops it as it stops a worker started from a terminal, even when the suite
    # runs in the background (`cmd &` without job control starts it with SIGINT ignored,
    # which Python then leaves ignored: the clean-exit test waited 30 s for nothing)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print("faultapp ready", flush=True, file=sys.stderr)
    waitress.serve(Window(app), host="127.0.0.1", port=args.port, threads=args.threads,
                   connection_limit=1000, channel_timeout=60)


if __name__ == "__main__":
    main()
