"""``python -m bench.lease_write [--readers 2] [-n 300]``: what read leases cost a write.

A writer backend calls ``invalidate(keys=[k], tags=["t"])`` ``-n`` times while ``--readers``
other processes hold read leases on the same prefix (each a ``RedisBackend`` with tracking,
as a web process has); the same with ``examcache.tracking_lease_ms = 0`` (no leases: the
invalidation returns as soon as Redis acknowledged it). Prints p50/p99/max per setting, and
how many writes waited for another reader or returned on the time limit. On the bench's
private redis-server (:mod:`.env`: nothing shared is touched)."""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

READER = """
import sys, time
from pyramid_examcache.cache.backends.redis import RedisBackend
b = RedisBackend(sys.argv[1], prefix=sys.argv[2], near_cache_bytes=1 << 20, tracking=True,
                 lease_ms=int(sys.argv[3]))
deadline = time.monotonic() + 30
while b._lease is not None and not b._lease.valid() and time.monotonic() < deadline:
    time.sleep(0.01)
print("up", flush=True)
end = time.monotonic() + 600
while time.monotonic() < end:  # a process that keeps reading holds its lease
    if b._lease is not None:
        b._lease.valid()
    time.sleep(0.05)
"""


def measure(url: str, prefix: str, lease_ms: int, readers: int, n: int) -> dict:
    from pyramid_examcache.cache.backends.redis import RedisBackend

    procs = [subprocess.Popen([sys.executable, "-c", READER, url, prefix, str(lease_ms)],
                              stdout=subprocess.PIPE, text=True) for _ in range(readers)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "up"
        writer = RedisBackend(url, prefix=prefix, near_cache_bytes=1 << 20, tracking=True,
                              lease_ms=lease_ms)
        if writer._lease is not None:
            deadline = time.monotonic() + 30
            while not writer._lease.valid() and time.monotonic() < deadline:
                time.sleep(0.01)
        ms = []
        for i in range(n):
            started = time.perf_counter()
            writer.invalidate(keys=[f"k{i % 5}"], tags=["t"])
            ms.append((time.perf_counter() - started) * 1000)
        ms.sort()
        out = {"p50_ms": statistics.median(ms), "p99_ms": ms[int(len(ms) * 0.99) - 1],
               "max_ms": ms[-1], "waited": writer._writer.waits if writer._writer else 0,
               "gave_up": writer._writer.gave_up if writer._writer else 0}
        writer.close()
        return out
    finally:
        for p in procs:
            p.kill()
            p.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--readers", type=int, default=2, help="other processes holding leases")
    parser.add_argument("-n", type=int, default=300, help="writes per setting")
    args = parser.parse_args()
    from .env import environment

    with environment() as env:
        for lease_ms in (0, 1000):
            r = measure(env.redis_url, f"lw{lease_ms}:", lease_ms, args.readers, args.n)
            print(f"tracking_lease_ms={lease_ms:<5d} {args.readers} reader processes + the "
                  f"writer's own: invalidate() p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, "
                  f"max {r['max_ms']:.2f} ms; waited for another reader {r['waited']}/{args.n}, "
                  f"returned on the time limit {r['gave_up']}")


if __name__ == "__main__":
    main()
