"""G2 with read leases under Redis faults (issue 21), through real HTTP to waitress worker
processes (:mod:`.faultapp`: the item app plus a ``/_state`` window), a private redis-server
and PostgreSQL with the durable invalidation log.

Every test counts reads that *started* after a write's response returned against the
version that write committed (a stale read: an older version), while reader processes
serve held values under their leases:

1. Redis closes the writer's idle pooled connection (``timeout 1``): not a fault;
2. short stalls (``DEBUG SLEEP 0.5``, ``CLIENT PAUSE 500 WRITE``) are waited out;
3. a stall longer than the lease limit (``CLIENT PAUSE 3000 WRITE``): stale reads only until
   the pause's end + ``breaker_reset`` + 1 s;
4. a writer partitioned from Redis while the readers are not: 0 stale after G6's bound;
5. eviction under ``maxmemory``: ``allkeys-lru`` turns leases off with one warning naming
   the policy; ``volatile-lru`` keeps them and never evicts the registry;
6. only readers hold leases: the mail consumer, an idle worker and a worker that exited
   cleanly cost a web write nothing.
"""
from __future__ import annotations

import bisect
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import redis
from sqlalchemy import create_engine

from pyramid_examcache.cache.backends.read_lease import POLICY_CHECK

from ..conftest import PrivateRedis, free_port, private_database, stop_processes, wait_for_port
from ..polling import wait_until
from . import itemapp
from .proxy import DOWN, UP, RespProxy
from .servers import ROOT, Client

PREFIX = "lf:"
LEASE = 1.0  # the default examcache.lease_ms, in seconds
LIMIT = LEASE * 1.01 + 0.05  # the lease limit: a write waits at most this for a reader
BREAKER_RESET = 2.0  # the default examcache.breaker_reset
#: an invalidation that waited for no lease takes far less than one (waiting for a lease
#: takes about LEASE); 50 ms was exceeded by scheduling alone on a loaded 2-core machine
NO_WAIT_MS = LEASE * 1000 / 4
G6_BOUND = 2.0 + 2 * 1.0  # relay_after + 2 x relay_interval (the defaults)
ITEM = "/items/1"


# -- servers and processes ------------------------------------------------------------------

class FaultRedis(PrivateRedis):
    """A private redis-server that accepts ``DEBUG`` (``DEBUG SLEEP``), plus ``extra``
    command-line options."""

    def __init__(self, *extra: str) -> None:
        super().__init__()
        self.extra = list(extra)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port),
             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", self.dir,
             "--enable-debug-command", "yes", *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)


@pytest.fixture
def server():
    own = FaultRedis()
    own.start()
    yield own
    own.stop()
    shutil.rmtree(own.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def module_db():
    with private_database("leasefaults") as url:
        yield url


@pytest.fixture
def db(module_db):
    """Fresh item and invalidation-log tables (no relay of another test knows this
    database), and the mail outbox for the consumer's relay."""
    from pyramid_examcache.mail.outbox import metadata as outbox_metadata

    itemapp.create_schema(module_db)
    engine = create_engine(module_db)
    outbox_metadata.create_all(engine)
    engine.dispose()
    return module_db


@dataclass
class App:
    """One :mod:`.faultapp` worker process."""

    proc: subprocess.Popen
    base: str
    log_path: str
    name: str

    def state(self) -> dict:
        client = Client(self.base, timeout=30)
        try:
            data, _ = client.json("GET", "/_state")
        finally:
            client.close()
        return data

    def log(self) -> str:
        with open(self.log_path, errors="replace") as fh:
            return fh.read()

    def get(self, path: str = ITEM) -> tuple[int, str | None]:
        client = Client(self.base, timeout=30)
        try:
            data, headers = client.json("GET", path)
        finally:
            client.close()
        return data["version"], headers.get("X-Cache")


@contextmanager
def apps(db: str, urls: list[str], tmp_path, names: list[str] | None = None,
         settings: dict | None = None, threads: list[int] | None = None):
    """One faultapp process per Redis URL (a worker of a deployment on the defaults)."""
    procs: list[subprocess.Popen] = []
    out: list[App] = []
    settings = {"examcache.near_cache": "lease", **(settings or {})}  # leases are opt-in
    extra = [arg for k, v in settings.items() for arg in ("--setting", f"{k}={v}")]
    try:
        for i, url in enumerate(urls):
            name = (names or [])[i] if names else f"app{i}"
            port = free_port()
            log_path = str(tmp_path / f"{name}.log")
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "tests.cache.faultapp", "--port", str(port),
                     "--db", db, "--redis", url, "--prefix", PREFIX,
                     "--threads", str((threads or [8] * len(urls))[i]), *extra],
                    cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
            procs.append(proc)
            out.append(App(proc, f"http://127.0.0.1:{port}", log_path, name))
        for app in out:
            wait_for_port(int(app.base.rsplit(":", 1)[1]), timeout=60)
        yield out
    finally:
        stop_processes([p for p in procs if p.poll() is None])


def exit_code(app: App, timeout: float = 30) -> int:
    """The worker's exit code; if it has not exited, fail with its threads' stacks."""
    try:
        return app.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        app.proc.send_signal(signal.SIGUSR1)  # faulthandler: the stacks go to its log
        wait_until(lambda: "Current thread" in open(app.log_path).read()
                   or "Thread 0x" in open(app.log_path).read(), timeout=10, message="stacks")
        raise AssertionError(f"{app.name} still running {timeout}s after the signal; its log:\n"
                             + open(app.log_path).read()[-6000:]) from None


# -- load and the stale-read count ----------------------------------------------------------

@dataclass
class Read:
    start: float
    end: float
    version: int
    cache: str | None
    app: str


@dataclass
class Write:
    version: int
    sent: float
    returned: float

    @property
    def ms(self) -> float:
        return (self.returned - self.sent) * 1000


class Readers:
    """``per_app`` threads per reader process, each reading ``path`` in a loop."""

    def __init__(self, readers: list[App], path: str = ITEM, per_app: int = 2) -> None:
        self.readers, self.path, self.per_app = readers, path, per_app
        self.reads: list[Read] = []
        self.latest: list[float] = []  # each read's start as it happens (started_after)
        self.errors: list[BaseException] = []
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(app,), daemon=True)
                         for app in readers for _ in range(per_app)]

    def _run(self, app: App) -> None:
        client = Client(app.base, timeout=30)
        mine: list[Read] = []
        try:
            while not self._halt.is_set():
                started = time.monotonic()
                data, headers = client.json("GET", self.path)
                mine.append(Read(started, time.monotonic(), data["version"],
                                 headers.get("X-Cache"), app.name))
                self.latest.append(started)  # (list.append is atomic)
        except BaseException as exc:  # noqa: BLE001 -- reported by stop()
            self.errors.append(exc)
        finally:
            client.close()
            with self._lock:
                self.reads.extend(mine)

    def started_after(self, moment: float) -> int:
        """Reads started after ``moment`` so far."""
        return sum(start > moment for start in list(self.latest))

    def __enter__(self) -> "Readers":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> list[Read]:
        self._halt.set()
        for t in self._threads:
            t.join(60)
        assert not any(t.is_alive() for t in self._threads), "a reader hung"
        assert not self.errors, self.errors[:3]
        return sorted(self.reads, key=lambda r: r.start)


def put(client: Client, version: int, path: str = ITEM) -> Write:
    sent = time.monotonic()
    data, _ = client.json("PUT", f"{path}?v={version}")
    assert data["version"] == version
    return Write(version, sent, time.monotonic())


def stale_reads(reads: list[Read], writes: list[Write]) -> list[tuple[Read, Write]]:
    """Each read that started after a write had returned and saw an older version than
    that write committed, with the newest such write."""
    done = sorted(writes, key=lambda w: w.returned)
    times = [w.returned for w in done]
    newest: list[Write] = []
    for w in done:
        newest.append(w if not newest or w.version > newest[-1].version else newest[-1])
    out = []
    for r in reads:
        i = bisect.bisect_left(times, r.start)
        if i and r.version < newest[i - 1].version:
            out.append((r, newest[i - 1]))
    return out


def lag_ms(stale: list[tuple[Read, Write]]) -> tuple[int, int] | None:
    """How long after its write returned the earliest and the latest stale read started."""
    lags = [(r.start - w.returned) * 1000 for r, w in stale]
    return (round(min(lags)), round(max(lags))) if lags else None


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def hold_leases(readers: list[App], timeout: float = 30.0) -> None:
    """Every reader has served hits and holds a valid lease now."""
    for app in readers:
        wait_until(lambda: app.get()[1] == "HIT" and app.state()["lease_valid"],
                   timeout=timeout, interval=0.02, message=f"{app.name} serving hits under a lease")


def registered(admin: redis.Redis) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in admin.hgetall(f"{PREFIX}x:readers").items()}


def marker_left_ms(admin: redis.Redis) -> int:
    """How long the wipe marker (``x:wiped``) still stands: after a wipe -- or the
    registry's creation by the first reader -- writers also wait for every process whose
    tracking connection is open, registered or not."""
    key = f"{PREFIX}x:wiped"
    value = admin.get(key)
    if value is None:
        return 0
    if int(value) < 10**12:  # a flag living as long as its TTL
        return max(0, admin.pttl(key))
    sec, usec = admin.time()
    return max(0, int(value) - (int(sec) * 1000 + int(usec) // 1000))


def no_wipe_marker(admin: redis.Redis) -> None:
    wait_until(lambda: marker_left_ms(admin) == 0, timeout=15, interval=0.02,
               message="the wipe marker's end")


def report(name: str, **figures) -> None:
    print(f"\n[lease-faults {name}] " + " ".join(f"{k}={v}" for k, v in figures.items()))


# -- 1. an idle-closed connection -----------------------------------------------------------

WRITER_NAME = "lf-writer"


def writer_connections(admin: redis.Redis) -> dict[int, int]:
    """The writer's connections other than its tracking stream: id -> idle seconds."""
    return {int(c["id"]): int(c["idle"]) for c in admin.client_list()
            if c.get("name") == WRITER_NAME}


def wait_closed_by_redis(admin: redis.Redis, since: float) -> int:
    """Wait until Redis has closed the writer's idle connections: every connection it had
    when its last write returned (``since``) is gone, unless it was seen busy (idle 0)
    more than 1.2 s later (the lease keeper's). Returns how many were closed (0: the
    writer had none left idle -- a failed command drops its connection)."""
    before = writer_connections(admin)
    busy: set[int] = set()

    def closed():
        now = writer_connections(admin)
        if time.monotonic() - since > 1.2:
            busy.update(i for i, idle in now.items() if idle == 0)
        gone = set(before) - set(now)
        if time.monotonic() - since > 1.2 and set(before) <= gone | busy:
            return (len(gone),)
        return None

    try:
        return wait_until(closed, timeout=20, interval=0.05,
                          message="the writer's idle connections closed by Redis")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: had {before}, has {writer_connections(admin)}, "
                             f"busy {busy}") from None


@pytest.mark.slow
def test_an_idle_closed_writer_connection_is_not_a_fault(db, server, tmp_path):
    """Redis closes the writer's pooled connection after 1 s idle (``timeout 1``; a proxy or
    NAT does the same). Each write comes after that: its invalidation must still be applied
    (retried on a fresh connection, not deferred) and no read started after it returned may
    see the old version while two other processes serve held values under leases."""
    admin = server.client()
    admin.config_set("timeout", 1)
    urls = [server.url, server.url, f"{server.url}?client_name={WRITER_NAME}"]
    with apps(db, urls, tmp_path, names=["r1", "r2", "writer"], threads=[8, 8, 1]) as (r1, r2, w):
        hold_leases([r1, r2])
        writes: list[Write] = []
        closed = []
        client = Client(w.base)
        since = put(client, 1, "/items/2").returned  # the writer's connection exists
        with Readers([r1, r2]) as load:
            for v in range(1, 7):
                closed.append(wait_closed_by_redis(admin, since)[0])
                client.close()  # (HTTP keep-alive is not the point: a new one each time)
                client = Client(w.base)
                writes.append(put(client, v))
                since = writes[-1].returned
            reads_until = time.monotonic() + 0.5  # reads after the last write too
            wait_until(lambda: time.monotonic() > reads_until, timeout=5, interval=0.05)
        reads = load.stop()
        client.close()
        state = w.state()
    stale = stale_reads(reads, writes)
    after = [r for r in reads if r.start > writes[0].returned]
    report("idle-timeout", writes=len(writes), reads=len(reads), reads_after=len(after),
           hits=sum(r.cache == "HIT" for r in after), stale=len(stale),
           stale_lag_ms=lag_ms(stale),
           write_ms=[round(x.ms, 1) for x in writes], closed=closed,
           deferred=state["stats"].get("deferred", 0), errors=state["stats"].get("errors", 0))
    assert len(after) >= 100 and sum(r.cache == "HIT" for r in after) >= 10
    assert sum(n > 0 for n in closed) >= 3, f"too few writes met a closed connection: {closed}"
    assert state["stats"].get("deferred", 0) == 0, "an idle-closed connection deferred a write"
    assert not stale, f"{len(stale)} stale reads, the first {stale[0][0].start - stale[0][1].returned:.3f}s after its write returned"


# -- 2 and 3. stalls ------------------------------------------------------------------------

@dataclass
class Stall:
    kind: str
    start: float
    end: float = 0.0


class Writer(threading.Thread):
    """Writes ``ITEM`` back to back (``gap`` s apart) until stopped."""

    def __init__(self, app: App, gap: float = 0.03, first: int = 1) -> None:
        super().__init__(daemon=True)
        self.app, self.gap, self.version = app, gap, first
        self.writes: list[Write] = []
        self.errors: list[BaseException] = []
        self._halt = threading.Event()

    def run(self) -> None:
        client = Client(self.app.base, timeout=60)
        try:
            while not self._halt.is_set():
                self.writes.append(put(client, self.version))
                self.version += 1
                self._halt.wait(self.gap)
        except BaseException as exc:  # noqa: BLE001
            self.errors.append(exc)
        finally:
            client.close()

    def returned_after(self, t: float) -> bool:
        return any(w.sent > t for w in list(self.writes))

    def stop(self) -> list[Write]:
        self._halt.set()
        self.join(60)
        assert not self.is_alive(), "the writer hung"
        assert not self.errors, self.errors[:3]
        return self.writes


def stall(admin: redis.Redis, kind: str, ms: int) -> Stall:
    """Stall Redis for ``ms``: ``sleep`` (DEBUG SLEEP: nothing runs; returns at its end)
    or ``pause`` (CLIENT PAUSE WRITE: writes and scripts wait, reads and PING run)."""
    if kind == "sleep":
        s = Stall(kind, time.monotonic())
        admin.execute_command("DEBUG", "SLEEP", f"{ms / 1000}")
        s.end = time.monotonic()
        return s
    admin.execute_command("CLIENT", "PAUSE", str(ms), "WRITE")
    s = Stall(kind, time.monotonic())
    s.end = s.start + ms / 1000
    return s


@pytest.mark.slow
def test_short_stalls_are_waited_out(db, server, tmp_path):
    """Under read load, while a writer writes back to back: three ``DEBUG SLEEP 0.5`` and three
    ``CLIENT PAUSE 500 WRITE``. A write caught in a stall retries until it is applied (the
    stall is shorter than the lease limit) and waits for the leases: 0 stale reads among
    those started after any write returned, and nothing deferred."""
    admin = server.client()
    with apps(db, [server.url] * 3, tmp_path, names=["r1", "r2", "writer"]) as (r1, r2, w):
        hold_leases([r1, r2])
        stalls: list[Stall] = []
        with Readers([r1, r2]) as load:
            writer = Writer(w)
            writer.start()
            for kind in ("sleep", "sleep", "sleep", "pause", "pause", "pause"):
                last = stalls[-1].end if stalls else 0.0
                wait_until(lambda: writer.returned_after(last + 0.2)
                           and all(a.state()["lease_valid"] for a in (r1, r2)),
                           timeout=30, interval=0.05, message="writes and leases after a stall")
                stalls.append(stall(admin, kind, 500))
            end = stalls[-1].end
            wait_until(lambda: writer.returned_after(end + 0.3), timeout=30, interval=0.05,
                       message="a write after the last stall")
            writes = writer.stop()
        reads = load.stop()
        state = w.state()
    stale = stale_reads(reads, writes)
    caught = [w_ for w_ in writes if any(w_.sent < s.end and w_.returned > s.start for s in stalls)]
    per_stall = []
    for i, s_ in enumerate(stalls):
        nxt = stalls[i + 1].start if i + 1 < len(stalls) else float("inf")
        per_stall.append((s_.kind, [round(x.ms) for x in writes
                                    if x.sent < s_.end and x.returned > s_.start],
                          sum(s_.start - 0.2 < r.start < nxt for r, _ in stale)))
    report("short-stalls", writes=len(writes), reads=len(reads),
           hits=sum(r.cache == "HIT" for r in reads), stale=len(stale), stale_lag_ms=lag_ms(stale),
           per_stall=per_stall, caught=len(caught),
           write_p50_ms=round(pct([x.ms for x in writes], 0.5), 1),
           write_max_ms=round(max(x.ms for x in writes)),
           deferred=state["stats"].get("deferred", 0),
           lease_waits=state["stats"].get("lease_waits", 0),
           lease_timeouts=state["stats"].get("lease_timeouts", 0))
    assert len(caught) >= len(stalls) - 1, "the writes did not meet the stalls"
    assert sum(r.cache == "HIT" for r in reads) >= 100
    assert not stale, (f"{len(stale)} stale reads; first at {stale[0][0].start - stale[0][1].returned:.3f}s "
                       f"after its write returned")
    assert state["stats"].get("deferred", 0) == 0


@pytest.mark.slow
def test_a_stall_longer_than_the_lease_limit_is_bounded(db, server, tmp_path):
    """``CLIENT PAUSE 3000 WRITE``: a write caught in it returns after about the lease limit
    with its invalidation deferred; stale reads are allowed only until the pause's end +
    ``breaker_reset`` + 1 s (the deferred retry), never after."""
    admin = server.client()
    with apps(db, [server.url] * 3, tmp_path, names=["r1", "r2", "writer"]) as (r1, r2, w):
        hold_leases([r1, r2])
        client = Client(w.base, timeout=60)
        writes = [put(client, 1)]
        with Readers([r1, r2]) as load:
            hold_leases([r1, r2])
            pause = stall(admin, "pause", 3000)
            writes.append(put(client, 2))
            bound = pause.end + BREAKER_RESET + 1.0
            # (a count, not a duration: on a busy machine 0.5 s held 25 reads)
            wait_until(lambda: time.monotonic() > bound + 0.5 and load.started_after(bound) >= 50,
                       timeout=60, interval=0.05, message="50 reads past the bound")
            # the new version is served again (the deferred invalidation was applied)
            wait_until(lambda: all(a.get()[0] == 2 for a in (r1, r2)), timeout=30,
                       message="the new version served")
        reads = load.stop()
        client.close()
        state = w.state()
    stale = stale_reads(reads, writes)
    late = [(r, w_) for r, w_ in stale if r.start > bound]
    write = writes[-1]
    report("long-pause", write_ms=round(write.ms), reads=len(reads),
           hits=sum(r.cache == "HIT" for r in reads), stale=len(stale),
           stale_from_s=round(min((r.start - write.returned for r, _ in stale), default=0), 3),
           stale_until_s=round(max((r.start - write.returned for r, _ in stale), default=0), 3),
           pause_end_s=round(pause.end - write.returned, 3),
           bound_s=round(bound - write.returned, 3), late=len(late),
           reads_after_bound=sum(r.start > bound for r in reads),
           deferred=state["stats"].get("deferred", 0))
    assert sum(r.start > bound for r in reads) >= 50
    assert not late, f"{len(late)} stale reads after the bound"
    assert write.returned < pause.end, "the write waited for the whole pause"
    assert write.ms / 1000 >= LIMIT * 0.9, f"returned after {write.ms:.0f} ms, before the lease limit"
    assert state["stats"].get("deferred", 0) >= 1


# -- 4. a partitioned writer ----------------------------------------------------------------

@pytest.mark.slow
def test_a_partitioned_writer_leaves_no_stale_read_past_the_g6_bound(db, server, tmp_path):
    """The writer reaches Redis through a proxy that then holds everything in both directions
    (a silent partition) while the readers still reach Redis. Its write commits in
    PostgreSQL (with the log row) but cannot invalidate: reads that start later than the
    write's return + G6's bound (relay_after + 2 x relay_interval) are never stale."""
    with RespProxy("127.0.0.1", server.port) as proxy:
        urls = [server.url, server.url, f"redis://127.0.0.1:{proxy.port}/0"]
        with apps(db, urls, tmp_path, names=["r1", "r2", "writer"]) as (r1, r2, w):
            hold_leases([r1, r2])
            client = Client(w.base, timeout=60)
            writes = [put(client, 1)]
            with Readers([r1, r2]) as load:
                hold_leases([r1, r2])
                proxy.hold(UP)
                proxy.hold(DOWN)
                writes.append(put(client, 2))
                bound = writes[-1].returned + G6_BOUND
                wait_until(lambda: time.monotonic() > bound + 0.5, timeout=30, interval=0.05,
                           message="reads past the bound")
                wait_until(lambda: all(a.get()[0] == 2 for a in (r1, r2)), timeout=30,
                           message="the new version served (relayed)")
            reads = load.stop()
            client.close()
            state = w.state()
            proxy.cut()
    stale = stale_reads(reads, writes)
    write = writes[-1]
    late = [(r, w_) for r, w_ in stale if r.start > bound]
    report("partitioned-writer", write_ms=round(write.ms), reads=len(reads),
           hits=sum(r.cache == "HIT" for r in reads), stale=len(stale),
           stale_until_s=round(max((r.start - write.returned for r, _ in stale), default=0), 3),
           late=len(late), reads_after_bound=sum(r.start > bound for r in reads),
           deferred=state["stats"].get("deferred", 0))
    assert sum(r.start > bound for r in reads) >= 50
    assert not late, f"{len(late)} stale reads after G6's bound"
    # it could not confirm its invalidation (its DEL may have run): it waited the leases out
    assert write.ms / 1000 >= LIMIT * 0.9, f"returned after {write.ms:.0f} ms, before the lease limit"


# -- 5. eviction ----------------------------------------------------------------------------

class Evictions(threading.Thread):
    """Collects the names of evicted keys (keyspace notifications ``Ee``)."""

    def __init__(self, server: PrivateRedis) -> None:
        super().__init__(daemon=True)
        client = server.client()
        client.config_set("notify-keyspace-events", "Ee")
        self.pubsub = client.pubsub()
        self.pubsub.subscribe("__keyevent@0__:evicted")
        self.keys: list[str] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            msg = self.pubsub.get_message(timeout=0.1)
            if msg and msg["type"] == "message":
                self.keys.append(msg["data"].decode(errors="replace"))

    def stop(self) -> list[str]:
        self._halt.set()
        self.join(10)
        self.pubsub.close()
        return self.keys


class Filler(threading.Thread):
    """Writes 20 KB values with a TTL (evictable under both policies) until stopped."""

    def __init__(self, server: PrivateRedis) -> None:
        super().__init__(daemon=True)
        self.client = server.client()
        self._halt = threading.Event()
        self.errors = 0

    def run(self) -> None:
        i = 0
        blob = b"x" * 20_000
        while not self._halt.is_set():
            try:
                self.client.set(f"junk:{i}", blob, ex=600)
            except redis.RedisError:
                self.errors += 1
            i += 1
            self._halt.wait(0.002)

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-lru"])
def test_eviction(db, tmp_path, policy):
    """A Redis under ``maxmemory`` that really evicts while a writer writes and readers read.
    ``allkeys-*`` may evict the lease registry: the app starts with one warning naming the
    policy and serves without leases. ``volatile-*`` never evicts the registry (it has no
    TTL): leases stay on. Either way no read started after a write returned is stale."""
    # one sample per eviction: nearly random among the candidates, so the cache's own keys
    # (and, under allkeys-*, the registry) are evicted too, not only the filler's
    server = FaultRedis("--maxmemory", "8mb", "--maxmemory-policy", policy,
                        "--maxmemory-samples", "1")
    server.start()
    try:
        admin = server.client()
        evictions = Evictions(server)
        evictions.start()
        with apps(db, [server.url] * 3, tmp_path, names=["r1", "r2", "writer"]) as apps_:
            r1, r2, w = apps_
            for app in (r1, r2):  # serving
                wait_until(lambda: app.get()[1] == "HIT", timeout=30, message="hits")
            if policy.startswith("allkeys"):  # every process has seen the policy, and any
                # lease granted before has run out (read_lease.settled_off)
                wait_until(lambda: all(policy in a.log() for a in apps_), timeout=30,
                           message="the policy warning")
                time.sleep(POLICY_CHECK + 1.2)
            filler = Filler(server)
            filler.start()
            lease_seen = {a.name: False for a in apps_}
            client = Client(w.base)
            writes: list[Write] = []
            with Readers([r1, r2]) as load:
                v, deadline = 0, time.monotonic() + 60
                # until the cache's own keys were evicted a few times under the writes
                while v < 40 or sum(k.startswith(PREFIX) for k in evictions.keys) < 10:
                    v += 1
                    writes.append(put(client, v))
                    for a in apps_:
                        lease_seen[a.name] |= a.state()["lease_valid"]
                    assert time.monotonic() < deadline, (
                        f"the cache's keys were not evicted: {len(evictions.keys)} evictions")
            reads = load.stop()
            filler.stop()
            client.close()
            writer_stats = w.state()["stats"]
            evicted_total = int(admin.info("stats")["evicted_keys"])
            logs = {a.name: a.log() for a in apps_}
        evicted = evictions.stop()
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)
    stale = stale_reads(reads, writes)
    registry = sorted({k for k in evicted if k.startswith(f"{PREFIX}x:")})
    warnings = {name: text.count(policy) for name, text in logs.items()}
    report(f"eviction {policy}", writes=len(writes), reads=len(reads),
           hits=sum(r.cache == "HIT" for r in reads), stale=len(stale),
           evicted_keys=evicted_total, evicted_app_keys=sum(k.startswith(PREFIX) for k in evicted),
           registry_evicted=registry, lease_seen=lease_seen, warnings=warnings,
           write_p50_ms=round(pct([x.ms for x in writes], 0.5), 1),
           write_p99_ms=round(pct([x.ms for x in writes], 0.99), 1),
           lease_waits=writer_stats.get("lease_waits", 0),
           lease_timeouts=writer_stats.get("lease_timeouts", 0))
    assert evicted_total > 0 and sum(k.startswith(PREFIX) for k in evicted) > 0
    assert not stale, f"{len(stale)} stale reads"
    if policy.startswith("allkeys"):
        # one warning in each process, at start
        assert warnings["r1"] == warnings["r2"] == warnings["writer"] == 1, warnings
        assert not any(lease_seen.values()), f"read leases on under {policy}: {lease_seen}"
        # leases are off everywhere: no write may wait one out (nobody holds one)
        assert writer_stats.get("lease_timeouts", 0) == 0, (
            f"{writer_stats.get('lease_timeouts')} writes waited out a lease with leases off "
            f"(write p50 {pct([x.ms for x in writes], 0.5):.0f} ms)")
    else:
        assert lease_seen["r1"] and lease_seen["r2"], lease_seen
        assert not registry, f"the lease registry was evicted: {registry}"
        assert all(n == 0 for n in warnings.values()), warnings


# -- 6. only readers hold leases ------------------------------------------------------------

WRITES = 50  # per phase: p99 of 50 is the slowest

CONSUMER_INI = """\
[app:main]
use = egg:examcache_demo
{settings}

[loggers]
keys = root

[handlers]
keys = console

[formatters]
keys = generic

[logger_root]
level = INFO
handlers = console

[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = generic

[formatter_generic]
format = %(asctime)s %(levelname)-5.5s [%(name)s] %(message)s
"""


def consumer_process(ini: str, log_path: str) -> subprocess.Popen:
    from ..mail.support import consumer_command

    with open(log_path, "wb") as log:
        return subprocess.Popen(consumer_command(ini), stdout=log, stderr=subprocess.STDOUT)


def warm_up(writer: App) -> None:
    """A first write (another item): connections, scripts and the ORM are ready before
    any write is timed."""
    client = Client(writer.base)
    client.json("PUT", "/items/2?v=1")
    client.close()


def invalidation_ms(app: App, since: float) -> list[float]:
    return [i["ms"] for i in app.state()["invalidations"] if i["at"] >= since]


def renewals(admin: redis.Redis, reader_id: str, leases: float, seen: set, foreign: set) -> None:
    """Poll ``x:readers`` until ``reader_id``'s registration has been renewed ``leases``
    lease periods past its first sighting (Redis's clock), collecting any other id."""
    first: list[int] = []

    def enough():
        now = registered(admin)
        foreign.update(set(now) - seen)
        mine = now.get(reader_id)
        if mine is None:
            return False
        first.append(mine)
        return mine - first[0] >= leases * LEASE * 1000

    wait_until(enough, timeout=30, interval=0.02, message="lease renewals")


@pytest.mark.slow
def test_the_consumer_holds_no_lease_and_stopping_or_killing_it_costs_writes_nothing(
        db, server, tmp_path):
    """``examcache-consumer`` on the same Redis cache settings (it relays the invalidation
    log) never registers as a reader; SIGSTOP and then SIGKILL of it leave every web
    write's invalidation under 50 ms (p99) with no lease wait."""
    admin = server.client()
    ini = tmp_path / "consumer.ini"
    ini.write_text(CONSUMER_INI.format(settings="\n".join(f"{k} = {v}" for k, v in {
        "sqlalchemy.url": db, "examcache.redis_url": server.url,
        "examcache.key_prefix": PREFIX, "examcache.near_cache": "lease",
        "mail.queue_url": f"sqlite:///{tmp_path}/q.sqlite",
        "mail.relay_interval": "1"}.items())))
    log_path = str(tmp_path / "consumer.log")
    consumer = consumer_process(str(ini), log_path)
    try:
        with apps(db, [server.url], tmp_path, names=["web"]) as (web,):
            wait_until(lambda: "relaying the cache invalidation log" in open(log_path).read(),
                       timeout=30, message="the consumer relaying the cache's log")
            warm_up(web)
            hold_leases([web])  # the web process reads (and holds a lease) and writes
            web_id = web.state()["reader_id"]
            foreign: set = set()
            client = Client(web.base)
            figures = {}
            with Readers([web], per_app=1):  # it keeps reading: its lease is renewed
                renewals(admin, web_id, 3, {web_id, "_"}, foreign)  # three lease periods
            no_wipe_marker(admin)
            v = 0
            for phase, sig in (("stopped", signal.SIGSTOP), ("killed", signal.SIGKILL)):
                consumer.send_signal(sig)
                since = time.monotonic()
                waits = web.state()["stats"].get("lease_waits", 0)
                for _ in range(WRITES):
                    v += 1
                    put(client, v)
                ms = invalidation_ms(web, since)
                figures[phase] = {
                    "n": len(ms), "p50": round(pct(ms, 0.5), 1),
                    "p99": round(pct(ms, 0.99), 1), "max": round(max(ms), 1),
                    "lease_waits": web.state()["stats"].get("lease_waits", 0) - waits}
                foreign.update(set(registered(admin)) - {web_id, "_"})
            client.close()
    finally:
        if consumer.poll() is None:
            consumer.send_signal(signal.SIGCONT)
            consumer.kill()
        consumer.wait(10)
    report("consumer", foreign_readers=sorted(foreign), **figures)
    assert not foreign, f"another process registered as a reader: {foreign}"
    for phase, f in figures.items():
        assert f["n"] == WRITES, f
        assert f["p99"] < NO_WAIT_MS, f"{phase}: {f}"
        assert f["lease_waits"] == 0, f"{phase}: {f}"


@pytest.mark.slow
def test_a_worker_that_stopped_serving_unregisters_and_writes_do_not_wait_for_it(
        db, server, tmp_path):
    """A worker that served hits, then nothing for more than a lease, leaves ``x:readers``;
    a write then does not wait for it -- and its next read is fresh."""
    admin = server.client()
    with apps(db, [server.url] * 2, tmp_path, names=["idle", "writer"]) as (idle, w):
        warm_up(w)
        hold_leases([idle])
        rid = idle.state()["reader_id"]
        assert rid in registered(admin)
        last_read = time.monotonic()
        wait_until(lambda: rid not in registered(admin), timeout=15, interval=0.05,
                   message="the idle worker unregistered")
        gone_after = time.monotonic() - last_read
        no_wipe_marker(admin)  # (the registry's creation set it)
        waits = w.state()["stats"].get("lease_waits", 0)
        since = time.monotonic()
        client = Client(w.base)
        write = put(client, 1)
        client.close()
        ms = invalidation_ms(w, since)
        waited = w.state()["stats"].get("lease_waits", 0) - waits
        version, cache = idle.get()
    report("idle-worker", unregistered_after_s=round(gone_after, 2), write_ms=round(write.ms, 1),
           invalidate_ms=[round(x, 1) for x in ms], lease_waits=waited, next_read=(version, cache))
    assert ms and max(ms) < NO_WAIT_MS, ms
    assert waited == 0
    assert version == 1


@pytest.mark.slow
# (SIGTERM to a bare waitress kills it without atexit: its lease runs out instead -- the
# documented bound, shown by the killed-reader tests of test_read_lease.py)
@pytest.mark.parametrize("sig", [signal.SIGINT], ids=["SIGINT"])
def test_a_worker_that_exits_cleanly_unregisters(db, server, tmp_path, sig):
    """A waitress worker that served hits is stopped (SIGINT or SIGTERM): it unregisters on
    the way out, so the next write does not wait ~1 s for its lease to run out."""
    admin = server.client()
    with apps(db, [server.url] * 2, tmp_path, names=["leaving", "writer"]) as (leaving, w):
        warm_up(w)
        hold_leases([leaving])
        rid = leaving.state()["reader_id"]
        assert rid in registered(admin)
        no_wipe_marker(admin)  # (the registry's creation set it)
        hold_leases([leaving])
        waits = w.state()["stats"].get("lease_waits", 0)
        client = Client(w.base)
        last_read = time.monotonic()
        leaving.get()  # it reads up to the signal: its lease is live
        leaving.proc.send_signal(sig)
        try:  # gone before its lease could have been given up for want of reads
            wait_until(lambda: rid not in registered(admin), timeout=5, interval=0.005,
                       message="unregistered")
            gone = time.monotonic() - last_read
        except AssertionError:
            gone = None
        since = time.monotonic()
        write = put(client, 1)  # at once: its lease would still be running
        client.close()
        code = exit_code(leaving)
        ms = invalidation_ms(w, since)
        waited = w.state()["stats"].get("lease_waits", 0) - waits
    report(f"clean-exit {sig.name}", exit_code=code,
           unregistered_s_after_last_read=gone and round(gone, 3),
           write_ms=round(write.ms, 1), invalidate_ms=[round(x, 1) for x in ms],
           lease_waits=waited)
    assert gone is not None, "still registered 5 s after the signal"
    assert gone < LEASE, f"unregistered {gone:.2f}s after the last read: by the idle give-up, not at exit"
    assert ms and max(ms) < NO_WAIT_MS, ms
    assert waited == 0
