"""When tracking can never work -- a Redis that refuses ``CLIENT`` (renamed away) or ``CLIENT
TRACKING`` (denied by an ACL), or a redis-py that cannot build the connection -- the process
logs ONE warning, never retries, and every read validates against Redis (no near-cache fast
path, never stale). A transient outage is logged when it starts and when it ends, not at
every reconnection attempt. Real redis-servers on private ports."""
from __future__ import annotations

import logging
import shutil
import subprocess
import threading
import time

import pytest
import redis

from pyramid_examcache.cache.backends.redis import RedisBackend
from pyramid_examcache.cache.backends.tracking import InvalidationStream

from ..conftest import PrivateRedis, wait_for_port
from ..polling import wait_until
from .test_tracking_backend import commandstats, read, store

PREFIX = "tu:"
LOGGER = "pyramid_examcache.cache.backends"

#: real ways a Redis refuses tracking for good, and what it answers
REFUSALS = {
    "client-renamed": (["--rename-command", "CLIENT", ""], "unknown command"),
    "tracking-denied-by-acl": (["--user", "default", "on", "nopass", "~*", "&*", "+@all",
                                "-client|tracking"], "NoPermissionError"),
}


class RefusingRedis(PrivateRedis):
    """A private redis-server started with extra configuration arguments."""

    def __init__(self, extra: list[str]) -> None:
        super().__init__()
        self.extra = extra

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is not installed (Debian package redis-server)",
                        pytrace=False)
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)


@pytest.fixture(params=sorted(REFUSALS))
def refusing_redis(request):
    extra, answer = REFUSALS[request.param]
    server = RefusingRedis(extra)
    server.start()
    server.answer = answer
    yield server
    server.stop()
    shutil.rmtree(server.dir, ignore_errors=True)


def tracking_records(caplog, level=logging.WARNING) -> list[str]:
    """This file's streams' records (a stream another test left running logs too)."""
    return [r.getMessage() for r in caplog.records
            if r.name.endswith(".tracking") and r.levelno >= level
            and r.getMessage().startswith(f"cache tracking for {PREFIX!r}")]


@pytest.mark.parametrize("lease_ms", [0, 1000], ids=["barrier", "read-lease"])
def test_a_redis_that_refuses_tracking_is_one_warning_and_validating_reads(
        refusing_redis, lease_ms, caplog):
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    b = RedisBackend(refusing_redis.url, prefix=PREFIX, near_cache_bytes=1 << 20, tracking=True,
                     socket_timeout=1.0, lease_ms=lease_ms)
    other = RedisBackend(refusing_redis.url, prefix=PREFIX, socket_timeout=1.0)
    try:
        stream = b._stream
        reason = wait_until(lambda: stream.unavailable, timeout=10, message="unavailable")
        assert refusing_redis.answer in reason
        stream._thread.join(10)
        assert not stream._thread.is_alive()  # no reconnection will ever be attempted
        assert not stream.healthy and stream.connections == 0
        warnings = tracking_records(caplog)
        assert len(warnings) == 1, warnings
        assert "not retried" in warnings[0] and refusing_redis.answer in warnings[0]
        assert "examcache.tracking" in warnings[0]  # names the setting that turns it off
        assert len(tracking_records(caplog, logging.DEBUG)) == 1  # nothing else, even quietly

        # the fallback: reads are right, each one asks Redis (no fast path), never stale
        store(b, "k", b"v1", ("t",))
        before = commandstats(refusing_redis)
        assert [read(b, "k", ("t",)) for _ in range(20)] == [b"v1"] * 20
        assert commandstats(refusing_redis).get("hmget", 0) - before.get("hmget", 0) == 20
        assert b.near_cache_bytes() == 0 and not b.read_lease_valid()
        other.invalidate(tags=["t"])
        assert read(b, "k", ("t",)) is None
        store(other, "k", b"v2", ("t",))
        assert read(b, "k", ("t",)) == b"v2"
        # its own writes work too (with leases on, the writer side waits at most a lease)
        started = time.monotonic()
        b.invalidate(keys=["k"])
        assert time.monotonic() - started < 1.06 * lease_ms / 1000 + 1.0
        assert read(b, "k", ("t",)) is None and read(other, "k", ("t",)) is None
        assert len(tracking_records(caplog)) == 1
    finally:
        b.close()
        other.close()


def test_a_client_that_cannot_build_the_tracking_connection_is_one_warning(private_redis,
                                                                            caplog):
    """redis-py refusing the connection's arguments (here an option it does not know; the
    maintenance-notification refusal of issue 18 was one) will refuse them every time."""
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    flushes: list[int] = []
    stream = InvalidationStream({"host": "127.0.0.1", "port": private_redis.port,
                                 "no_such_option": 1}, PREFIX, lambda keys: None,
                                lambda: flushes.append(1), reconnect_delay=0.01).start()
    try:
        reason = wait_until(lambda: stream.unavailable, timeout=10, message="unavailable")
        assert "no_such_option" in reason and "TypeError" in reason
        stream._thread.join(10)
        assert not stream._thread.is_alive()
        warnings = tracking_records(caplog)
        assert len(warnings) == 1 and "cannot build the tracking connection" in warnings[0]
        assert not stream.healthy and stream.connections == 0 and flushes == []
        assert stream.barrier(1.0) is False and stream.mark() is None
    finally:
        stream.stop()


def test_an_outage_is_logged_when_it_starts_and_ends_not_per_attempt(private_redis, caplog):
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    stream = InvalidationStream({"host": "127.0.0.1", "port": private_redis.port}, PREFIX,
                                lambda keys: None, lambda: None, reconnect_delay=0.02).start()
    try:
        assert stream.wait_healthy(10)
        private_redis.stop()
        # the loss, then 20 failed attempts: each one logged, at DEBUG only
        wait_until(lambda: len(tracking_records(caplog, logging.DEBUG)) >= 21,
                   timeout=20, message="20 failed reconnection attempts")
        warnings = tracking_records(caplog)
        assert len(warnings) == 1 and "connection lost" in warnings[0], warnings
        assert "reconnection failed" in tracking_records(caplog, logging.DEBUG)[-1]
        private_redis.start()
        assert stream.wait_healthy(10)
        assert wait_until(lambda: len(tracking_records(caplog)) == 2, timeout=5)
        assert "connection back" in tracking_records(caplog)[1]
        assert stream.connections == 2 and stream.losses == 1 and stream.unavailable is None
    finally:
        stream.stop()


def test_a_busy_redis_is_waited_for_not_given_up(private_redis, caplog):
    """``-BUSY`` (a script running past the time limit) says "not now": the stream keeps
    trying and is back once the script is killed."""
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    admin = private_redis.client()
    admin.config_set("lua-time-limit", 100)
    outcome: list = []

    def block():
        try:
            private_redis.client().eval("while true do end", 0)
        except redis.ResponseError as exc:  # killed
            outcome.append(exc)

    blocker = threading.Thread(target=block)
    blocker.start()
    stream = None
    try:
        def busy() -> bool:
            try:
                admin.ping()
            except redis.ResponseError as exc:
                return str(exc).startswith("BUSY")
            return False

        wait_until(busy, timeout=10, message="Redis busy")
        stream = InvalidationStream({"host": "127.0.0.1", "port": private_redis.port}, PREFIX,
                                    lambda keys: None, lambda: None,
                                    reconnect_delay=0.02).start()
        wait_until(lambda: len(tracking_records(caplog, logging.DEBUG)) >= 5, timeout=10,
                   message="failed attempts")
        assert "BUSY" in tracking_records(caplog, logging.DEBUG)[0]
        assert stream.unavailable is None and not stream.healthy
    finally:
        private_redis.client().script_kill()
        blocker.join(10)
    try:
        assert outcome and stream.wait_healthy(10) and stream.unavailable is None
        # the outage, and its end (logged just after the stream is healthy again)
        wait_until(lambda: len(tracking_records(caplog)) >= 2, timeout=10, message="back")
        assert len(tracking_records(caplog)) == 2
    finally:
        stream.stop()
