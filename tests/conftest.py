"""Shared fixtures: a private PostgreSQL database, a private Redis key prefix,
and a private redis-server process that tests may stop, pause and restart.

Nothing here touches data it did not create: the database is created and
dropped per test session, Redis keys live under a random prefix and are
deleted by pattern afterwards.
"""
from __future__ import annotations

import copy

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from contextlib import contextmanager

import pytest

PG_ADMIN_URL = os.environ.get("EXAMCACHE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("EXAMCACHE_TEST_REDIS", "redis://127.0.0.1:6379/0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


def stop_processes(procs, timeout: float = 10.0) -> None:
    """Terminate child processes, then kill those that do not exit in ``timeout``."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()


def _pg_admin():
    import psycopg

    return psycopg.connect(PG_ADMIN_URL, autocommit=True)


@contextmanager
def private_database(label: str = "test"):
    """Create a PostgreSQL database, yield its SQLAlchemy URL, drop it."""
    name = f"examcache_{label}_{uuid.uuid4().hex[:10]}"
    with _pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        with _pg_admin() as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
            )
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


@pytest.fixture(scope="session")
def pg_url():
    """A fresh PostgreSQL database for this test session (SQLAlchemy URL)."""
    with private_database("test") as url:
        yield url


@pytest.fixture(scope="session")
def built_dists(tmp_path_factory):
    """The sdist and the wheel, built once per session from a copy of the sources
    (tests/distributions.py): what tests/test_wheel.py checks and the minimal install installs."""
    from .distributions import build_dists

    return build_dists(tmp_path_factory.mktemp("dists"))


@pytest.fixture
def redis_prefix():
    """A unique key prefix on the shared Redis; its keys are deleted afterwards."""
    import redis

    prefix = f"examcache-test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def redis_url():
    return REDIS_URL


class PrivateRedis:
    """A redis-server process owned by one test: it can be stopped, paused
    (SIGSTOP: connections hang, the worst case for a client) and restarted on
    the same port with its data kept (when paused) or lost (when stopped)."""

    kind = "redis"

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="examcache-redis-")
        self.proc: subprocess.Popen | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is not installed (Debian package redis-server; "
                        ".ci/run installs it): the tests that stop and pause Redis need it",
                        pytrace=False)
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def client(self):
        import redis

        return redis.Redis.from_url(self.url)


@pytest.fixture
def private_redis():
    server = PrivateRedis()
    server.start()
    yield server
    server.stop()
    shutil.rmtree(server.dir, ignore_errors=True)


# -- multi-node topologies (tests/topologies.py): a Redis Cluster and a Sentinel setup --------

TOPOLOGIES = ("redis", "sentinel", "cluster")


@contextmanager
def _running(kind: str):
    """A topology of tests/topologies.py (``cluster`` or ``sentinel``) on private ports,
    started, and closed whatever happens."""
    from .topologies import PrivateCluster, PrivateSentinel

    own = PrivateCluster() if kind == "cluster" else PrivateSentinel()
    try:
        own.start()
        yield own
    finally:
        own.close()


@pytest.fixture(scope="session")
def redis_cluster():
    """A 3-primary Redis Cluster on private ports, shared by the session (keys under
    random prefixes, like the shared Redis); stopped at the end."""
    with _running("cluster") as cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_sentinel():
    """A primary, a replica and 3 sentinels on private ports, shared by the session."""
    with _running("sentinel") as sentinel:
        yield sentinel


@pytest.fixture(params=TOPOLOGIES)
def topology(request):
    """The cache's Redis on each topology: the shared Redis, Sentinel, Cluster."""
    if request.param in ("redis", "tracking", "fast", "fast-barrier"):  # tracking: read
        from .topologies import SharedRedis  # leases; fast: and the WSGI fast path; fast-
        # barrier: the fast path on the default near cache (tests/cache/test_concurrency)
        shared = SharedRedis(REDIS_URL, tracking=request.param in ("tracking", "fast"))
        if request.param.startswith("fast"):
            shared.kind += "+fast-path"
            shared.settings = {**shared.settings, "test.fast_path": "true"}
        return shared
    name, fast, _ = request.param.partition("-fast")  # sentinel-fast, cluster-fast: the
    own = request.getfixturevalue(f"redis_{name}")  # WSGI fast path (early hits after the
    if not fast:  # fenced barrier) on that topology
        return own
    own = copy.copy(own)  # (a session's servers, shared: the copy gets the settings)
    own.kind = f"{own.kind}+fast-path"
    own.settings = {**getattr(own, "settings", {}), "test.fast_path": "true"}
    return own


@pytest.fixture
def sentinel():
    """A primary, a replica and 3 sentinels of the test's own (it may fail them over)."""
    with _running("sentinel") as own:
        yield own


@pytest.fixture(params=TOPOLOGIES)
def private_topology(request):
    """A topology of its own that the test may pause, stop and restart."""
    if request.param == "redis":
        yield request.getfixturevalue("private_redis")
        return
    with _running(request.param) as own:
        yield own
