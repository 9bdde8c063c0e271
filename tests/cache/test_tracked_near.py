"""The tracked near cache (issue 11): entries go when their value key or a tag's version
key changes in Redis, a fill racing a write is never inserted, a loss forgets everything."""
from __future__ import annotations

import threading

from pyramid_examcache.cache.backends.redis import RedisBackend
from pyramid_examcache.cache.backends.tracked_near import TrackedNearCache
from pyramid_examcache.cache.backends.tracking import InvalidationStream

from ..mail.support import wait_until
from ..topologies import poll
from .test_fenced_near import late

P = "tn:"


def make(server, max_bytes=1 << 20):
    near = TrackedNearCache(max_bytes, lambda k: f"{P}v:{k}", lambda t: f"{P}t:{t}")
    stream = InvalidationStream({"host": "127.0.0.1", "port": server.port}, P, near.on_keys,
                                near.on_flush, reconnect_delay=0.05).start()
    assert stream.wait_healthy(10)
    return near, stream


def test_entries_go_with_their_key_or_any_of_their_tags(private_redis):
    near, stream = make(private_redis)
    r = private_redis.client()
    for key, tags in (("a", ("g1",)), ("b", ("g1", "g2")), ("c", ())):
        assert near.put(key, tags, b"s", key.encode(), stream, stream.mark())
    r.incr(f"{P}t:g2")  # b's tag
    assert stream.barrier(5)
    assert (near.get("a"), near.get("b"), near.get("c")) == (b"a", None, b"c")
    r.hset(f"{P}v:c", "d", "new")  # c's value key
    assert stream.barrier(5)
    assert (near.get("a"), near.get("c")) == (b"a", None)
    r.incr(f"{P}t:g1")
    assert stream.barrier(5)
    assert near.get("a") is None and near.nbytes == 0
    stream.stop()


def test_a_fill_racing_writes_never_leaves_a_stale_entry(private_redis):
    """Readers read the version and insert it; a writer bumps it. After every write's
    barrier, an entry present must hold the latest version (300 rounds)."""
    near, stream = make(private_redis)
    r = private_redis.client()
    r.set(f"{P}v:x", 0)
    stop = threading.Event()
    errors: list[str] = []

    def reader():
        client = private_redis.client()
        while not stop.is_set():
            token = stream.mark()
            value = client.get(f"{P}v:x")
            near.put("x", (), b"s", value, stream, token)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for version in range(1, 301):
            r.set(f"{P}v:x", version)
            assert stream.barrier(5)
            held = near.get("x")
            if held is not None and int(held) < version:
                errors.append(f"stale {held!r} after version {version}")
    finally:
        stop.set()
        for t in threads:
            t.join()
        stream.stop()
    assert errors == []


def test_losing_the_stream_empties_the_near_cache(private_redis):
    near, stream = make(private_redis)
    assert near.put("k", (), b"s", b"v", stream, stream.mark())
    r = private_redis.client()
    for c in r.client_list():
        if "P" in c.get("flags", ""):
            r.client_kill_filter(_id=c["id"])
    wait_until(lambda: near.get("k") is None, timeout=10, message="near cache emptied")
    assert stream.wait_healthy(10)
    stream.stop()


def test_peek_after_barrier_never_serves_a_value_invalidated_before_it_began(private_redis):
    """What early hits read in ``barrier`` mode (``Backend.peek_after_barrier``), G2: the
    reader's stream applies each message 0.1 s late (a busy process); another client
    invalidates held values one by one; right after its call returns, the reader's
    ``peek_after_barrier`` is never the old value -- its barrier's ``PONG`` is read after the
    message -- while a value nobody wrote is still served from the near cache."""
    reader = RedisBackend(private_redis.url, prefix=P, near_cache_bytes=1 << 20,
                          tracking=True, socket_timeout=2.0)
    writer = RedisBackend(private_redis.url, prefix=P)
    try:
        assert reader.near_mode == "barrier" and reader.answers_after_barrier()
        assert not reader.answers_locally() and not writer.answers_after_barrier()
        poll(lambda: reader._stream.healthy, 10, "the tracking stream")
        keys = [f"pb{i}" for i in range(10)]
        for key in ("kept", *keys):
            found = reader.lookup(key, "t", 5, 60, ("g",))
            assert reader.fill(key, "t", key.encode(), 60, ("g",), found.versions)
        assert reader._stream.barrier(5)  # the fills' own messages applied: nothing drops
        for key in ("kept", *keys):  # what the reads below insert
            poll(lambda: reader.get(key, ("g",)) == key.encode()
                 and reader._tracked.get(key) is not None, 10, f"{key} held")
        stream = reader._stream
        stream.on_keys = late(stream.on_keys, 0.1)
        pings = stream.pings_sent
        for key in keys:
            assert reader.peek_after_barrier(key, ("g",)) == key.encode()  # held: served
            writer.invalidate(keys=[key])
            assert reader.peek_after_barrier(key, ("g",)) is None, f"{key} after its write"
            assert reader.peek_after_barrier("kept", ("g",)) == b"kept"
            assert reader.peek_after_barrier("kept", ("other",)) is None  # other tags
        assert stream.pings_sent > pings, "no barrier ran"
        writer.invalidate(tags=["g"])
        assert reader.peek_after_barrier("kept", ("g",)) is None
    finally:
        reader.close()
        writer.close()


def test_a_failed_early_barrier_is_not_waited_for_again_by_the_same_request(private_redis):
    """A slow Redis costs a request one barrier timeout, not two: the early peek
    (``peek_after_barrier``) waits the barrier out, and the same thread's ordinary read of the
    same key that follows reads at once (no second barrier) and still gets the value; a read
    with no failed peek before it does wait for a barrier."""
    reader = RedisBackend(private_redis.url, prefix=P, near_cache_bytes=1 << 20,
                          tracking=True, socket_timeout=0.3)
    writer = RedisBackend(private_redis.url, prefix=P)
    try:
        poll(lambda: reader._stream.healthy, 10, "the tracking stream")
        for key in ("k", "other"):
            found = reader.lookup(key, "t", 5, 60, ())
            assert reader.fill(key, "t", b"v", 60, (), found.versions)
        assert reader._stream.barrier(5)  # the fills' own messages applied
        poll(lambda: reader.get("k") == b"v" and reader._tracked.get("k") is not None, 10,
             "k held")
        stream = reader._stream
        barriers = []
        barrier = stream.barrier
        stream.barrier = lambda timeout: barriers.append(timeout) or barrier(timeout)
        stream.on_keys = late(stream.on_keys, 2.0)  # the reader thread stuck on a message
        writer.invalidate(keys=["other"])
        assert reader.peek_after_barrier("k") is None  # the barrier timed out
        assert len(barriers) == 1
        assert reader.get("k") == b"v"  # the validating read
        assert len(barriers) == 1, "the ordinary read waited for the barrier again"
        assert reader.get("k") in (b"v", None) and len(barriers) == 2  # no failed peek: waits
    finally:
        reader.close()
        writer.close()
