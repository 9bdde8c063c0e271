"""Real HTTP for the cache tests: waitress in a thread or in child processes,
and a small keep-alive client."""
from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import waitress

from ..conftest import free_port, stop_processes, wait_for_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Client:
    """One keep-alive HTTP/1.1 connection (one per thread)."""

    def __init__(self, base: str, timeout: float = 30.0) -> None:
        host, port = base.replace("http://", "").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=timeout)

    def request(self, method: str, path: str, headers: dict | None = None):
        self.conn.request(method, path, headers=headers or {})
        resp = self.conn.getresponse()
        body = resp.read()
        return resp.status, dict(resp.getheaders()), body

    def json(self, method: str, path: str, headers: dict | None = None):
        status, headers, body = self.request(method, path, headers)
        assert status == 200, (status, body[:300])
        return json.loads(body), headers

    def close(self) -> None:
        self.conn.close()


@contextmanager
def thread_server(app, threads: int = 16):
    port = free_port()
    server = waitress.create_server(app, host="127.0.0.1", port=port, threads=threads,
                                    connection_limit=1000)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for_port(port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        close_server(server, thread)


def close_server(server, thread: threading.Thread) -> None:
    """Close a waitress server running in ``thread`` from its own loop, woken by its trigger:
    the loop ends now, not after waitress's 1 s select timeout (a second per server, tens of
    seconds per suite run), and the close does not race the loop."""
    try:
        server.trigger.pull_trigger(server.close)
    except OSError:  # the trigger is closed already: close from here, as before
        server.close()
    thread.join(5)


@contextmanager
def process_servers(n: int, db: str, redis_url: str | list[str], prefix: str,
                    load_delay: float = 0.0, load_counter: str = "", threads: int = 16,
                    settings: dict | None = None, env: list[dict] | None = None,
                    procs_out: list | None = None):
    """``n`` itemapp processes.  ``redis_url`` may be one URL per process (e.g. one
    through a proxy); ``settings`` are extra ``key=value`` app settings; ``env``
    extra environment per process; ``procs_out`` receives the Popen objects."""
    procs, bases = [], []
    urls = redis_url if isinstance(redis_url, list) else [redis_url] * n
    extra = [arg for k, v in (settings or {}).items() for arg in ("--setting", f"{k}={v}")]
    try:
        for i in range(n):
            port = free_port()
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "tests.cache.itemapp", "--port", str(port), "--db", db,
                 "--redis", urls[i], "--prefix", prefix, "--load-delay", str(load_delay),
                 "--load-counter", load_counter, "--threads", str(threads), *extra],
                cwd=ROOT, env={**os.environ, **((env or [{}] * n)[i])}))
            bases.append(f"http://127.0.0.1:{port}")
        for base in bases:
            wait_for_port(int(base.rsplit(":", 1)[1]), timeout=30)
        if procs_out is not None:
            procs_out.extend(procs)
        yield bases
    finally:
        stop_processes(procs)


def race(bases: list[str], get_path: str, put_path: str, writes: int = 300, readers: int = 6,
         reader_headers: dict | None = None, caches: list | None = None,
         write_gap: float = 0.0):
    """One writer and ``readers`` readers.  Returns (stale_reads, reads, written).
    ``reader_headers`` are sent with every read (e.g. an Authorization header);
    ``caches`` receives each read's X-Cache; ``write_gap``: seconds the writer leaves
    between two writes (pacing: time for the readers to fill and hold the value again).

    A read is stale when the version it saw is older than the newest version
    whose PUT response had returned before the read was sent."""
    returned: list[tuple[float, int]] = []  # (time the PUT response returned, version)
    done = threading.Event()
    reads: list[tuple[float, int]] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def writer():
        client = Client(bases[0])
        try:
            for v in range(1, writes + 1):
                client.json("PUT", put_path.format(v=v))
                returned.append((time.monotonic(), v))
                if write_gap:
                    done.wait(write_gap)  # (never set here: a pause between writes)
        except BaseException as exc:  # surface in the main thread
            errors.append(exc)
        finally:
            done.set()
            client.close()

    def reader(i):
        client = Client(bases[i % len(bases)])
        mine = []
        try:
            while not done.is_set():
                started = time.monotonic()
                data, headers = client.json("GET", get_path, reader_headers)
                mine.append((started, data["version"]))
                if caches is not None:
                    caches.append(headers.get("X-Cache"))
        except BaseException as exc:
            errors.append(exc)
        finally:
            client.close()
            with lock:
                reads.extend(mine)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(readers)]
    threads.append(threading.Thread(target=writer))
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not any(t.is_alive() for t in threads), "a reader or the writer hung"
    assert not errors, errors[:3]
    times = [t for t, _ in returned]
    stale = 0
    import bisect

    for started, version in reads:
        i = bisect.bisect_left(times, started)  # PUTs that returned before the read started
        known = returned[i - 1][1] if i else 0
        if version < known:
            stale += 1
    return stale, len(reads), writes
