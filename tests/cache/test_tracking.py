"""The tracking stream and its barrier (issue 11's building block), against a real
redis-server: every write acknowledged before a barrier began is seen before it returns;
one PING serves many concurrent barriers; losses and flushes forget everything."""
from __future__ import annotations

import threading
import time

import redis

from pyramid_examcache.cache.backends.tracking import InvalidationStream

from ..polling import wait_until

PREFIX = "trk:"


class Recorder:
    def __init__(self) -> None:
        self.keys: list[str] = []
        self.flushes = 0
        self.lock = threading.Lock()

    def on_keys(self, keys):
        with self.lock:
            self.keys.extend(keys)

    def on_flush(self):
        with self.lock:
            self.flushes += 1


def stream_for(server, recorder) -> InvalidationStream:
    stream = InvalidationStream({"host": "127.0.0.1", "port": server.port}, PREFIX,
                                recorder.on_keys, recorder.on_flush, reconnect_delay=0.05)
    stream.start()
    assert stream.wait_healthy(10)
    return stream


def test_every_acknowledged_write_is_seen_before_the_barrier_returns(private_redis):
    """The G2 argument of the module docstring, checked 300 times with a concurrent
    writer: after barrier() the last acknowledged write's key has been delivered."""
    rec = Recorder()
    stream = stream_for(private_redis, rec)
    client = private_redis.client()
    noise_stop = threading.Event()

    def noise():  # other writes on the same prefix, concurrently
        other = private_redis.client()
        i = 0
        while not noise_stop.is_set():
            other.set(f"{PREFIX}noise:{i % 50}", i)
            i += 1

    thread = threading.Thread(target=noise)
    thread.start()
    try:
        for i in range(300):
            key = f"{PREFIX}k:{i}"
            client.set(key, i)  # acknowledged now
            assert stream.barrier(5.0)
            with rec.lock:
                assert key in rec.keys, i
            assert f"untracked:{i}" not in rec.keys
    finally:
        noise_stop.set()
        thread.join()
        stream.stop()


def test_one_ping_serves_many_concurrent_barriers(private_redis):
    rec = Recorder()
    stream = stream_for(private_redis, rec)
    admin = private_redis.client()
    before = admin.info("commandstats").get("cmdstat_ping", {}).get("calls", 0)
    results: list[bool] = []
    start = threading.Barrier(64)

    def request():
        start.wait()
        for _ in range(20):
            results.append(stream.barrier(5.0))

    threads = [threading.Thread(target=request) for _ in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stream.stop()
    pings = admin.info("commandstats").get("cmdstat_ping", {}).get("calls", 0) - before
    assert results.count(True) == 64 * 20
    assert pings == stream.pings_sent
    assert pings < 64 * 20 / 4, pings  # group commit: most barriers shared a PING


def test_a_lost_connection_flushes_and_fails_barriers_until_tracking_is_back(private_redis):
    rec = Recorder()
    stream = stream_for(private_redis, rec)
    client = private_redis.client()
    flushes = rec.flushes
    token = stream.mark()
    # kill the tracking connection from outside (as a proxy or a failover would)
    ids = [c["id"] for c in client.client_list() if "P" in c.get("flags", "")]
    assert ids, "the tracking connection is subscribed (flag P)"
    for client_id in ids:
        client.client_kill_filter(_id=client_id)
    wait_until(lambda: rec.flushes >= flushes + 1, timeout=10, message="flush on loss")
    assert not stream.unchanged(token, [f"{PREFIX}a"])  # a fill across the loss is refused
    assert stream.wait_healthy(10)  # reconnected (and flushed again)
    client.set(f"{PREFIX}after", 1)
    assert stream.barrier(5.0)
    assert f"{PREFIX}after" in rec.keys
    stream.stop()


def test_a_restarted_redis_or_flushall_forgets_everything(private_redis):
    rec = Recorder()
    stream = stream_for(private_redis, rec)
    client = private_redis.client()
    flushes = rec.flushes
    client.flushall()
    assert stream.barrier(5.0)
    assert rec.flushes == flushes + 1
    private_redis.stop()
    wait_until(lambda: not stream.healthy, timeout=10, message="unhealthy")
    assert not stream.barrier(0.5)  # callers validate against Redis (and its breaker)
    private_redis.start()
    assert stream.wait_healthy(15)
    assert rec.flushes >= flushes + 3  # the FLUSHALL, the loss, the reconnection
    stream.stop()


def test_a_fill_is_refused_when_its_key_or_tag_changed_after_the_mark(private_redis):
    rec = Recorder()
    stream = stream_for(private_redis, rec)
    client = private_redis.client()
    token = stream.mark()
    client.incr(f"{PREFIX}t:group")  # a tag version moved between the read and the insert
    assert stream.barrier(5.0)
    assert not stream.unchanged(token, [f"{PREFIX}v:item", f"{PREFIX}t:group"])
    assert stream.unchanged(token, [f"{PREFIX}v:other"])
    later = stream.mark()
    assert stream.unchanged(later, [f"{PREFIX}t:group"])
    stream.stop()


def test_keys_outside_the_prefix_are_not_reported(private_redis):
    rec = Recorder()
    stream = stream_for(private_redis, rec)
    client = redis.Redis(port=private_redis.port)
    client.set("elsewhere:1", 1)
    client.set(f"{PREFIX}inside", 1)
    assert stream.barrier(5.0)
    assert rec.keys == [f"{PREFIX}inside"]
    stream.stop()


def test_redis_py_health_checks_never_touch_the_tracking_connection(private_redis):
    """The pool's kwargs carry ``health_check_interval`` (30 s in make_client): redis-py
    would PING on a request thread after that much idle and read the reply there, racing
    the reader (the bench saw the reader die after 30 s idle). A tiny interval makes the
    same situation in milliseconds: barriers keep working, nothing is lost or flushed."""
    rec = Recorder()
    stream = InvalidationStream({"host": "127.0.0.1", "port": private_redis.port,
                                 "health_check_interval": 0.001}, PREFIX,
                                rec.on_keys, rec.on_flush, reconnect_delay=0.05).start()
    assert stream.wait_healthy(10)
    flushes = rec.flushes
    client = private_redis.client()
    for i in range(20):
        deadline = time.monotonic() + 0.01
        while time.monotonic() < deadline:  # idle longer than the health-check interval
            pass
        client.set(f"{PREFIX}h:{i}", i)
        assert stream.barrier(5.0), i
        assert f"{PREFIX}h:{i}" in rec.keys
    assert rec.flushes == flushes and stream.healthy
    assert stream._thread.is_alive()
    stream.stop()


def test_a_reader_failure_of_any_kind_reconnects_instead_of_dying(private_redis):
    rec = Recorder()
    calls = []

    def bad_on_keys(keys):
        calls.append(keys)
        if len(calls) == 1:
            raise RuntimeError("a bug in a callback")
        rec.on_keys(keys)

    stream = InvalidationStream({"host": "127.0.0.1", "port": private_redis.port}, PREFIX,
                                bad_on_keys, rec.on_flush, reconnect_delay=0.05).start()
    assert stream.wait_healthy(10)
    flushes = rec.flushes
    client = private_redis.client()
    client.set(f"{PREFIX}boom", 1)  # the callback raises: the stream drops and reconnects
    wait_until(lambda: rec.flushes >= flushes + 2, timeout=10, message="flushed, reconnected")
    assert stream.wait_healthy(10)
    client.set(f"{PREFIX}after", 1)
    assert stream.barrier(5.0) and f"{PREFIX}after" in rec.keys
    assert len([c for c in client.client_list() if "P" in c.get("flags", "")]) == 1  # no leak
    stream.stop()
