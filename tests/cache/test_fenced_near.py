"""The ``barrier`` near cache on Sentinel and Cluster (``backends/fenced_near.py``), on
private topologies started by the tests (tests/topologies.py):

* Sentinel: a failover that lost a ``DEL`` flushes the near cache before the new epoch
  serves (a write made on the new primary is never hidden by a value held from the old
  one); a primary demoted by hand (no client killed) never answers from the near cache;
* Cluster: a write on any primary, by another client, empties the near cache before the
  writer's call returns (one tracking stream per primary).

The G2 races (threads, processes) and the fault tests under load run on both topologies
with the near cache on by default: tests/cache/test_concurrency.py and
tests/cache/test_topology_faults.py."""
from __future__ import annotations

import signal
import threading
import time

import pytest

from pyramid_examcache.cache import get_policy
from pyramid_examcache.cache.backends.cluster import ClusterBackend
from pyramid_examcache.cache.backends.failover import NotPrimary
from pyramid_examcache.cache.backends.redis import RedisBackend

from ..topologies import poll
from . import itemapp
from .servers import Client
from .test_topology_faults import cut_replication, direct, served, tag_keys

pytestmark = pytest.mark.slow
NEAR = 1 << 20


@pytest.fixture
def db(cache_pg_url):
    itemapp.create_schema(cache_pg_url, n_items=60)
    return cache_pg_url


def held(backend) -> bool:
    return backend.near_cache_bytes() > 0


def test_a_write_after_a_failover_that_lost_a_del_is_never_hidden_by_a_held_value(db, sentinel):
    """v=7's DEL reaches only the old primary (the replica is cut off), v=7 is held in the
    near cache, the old primary dies and the replica is promoted; v=8 is written on the new
    primary by another application (the reader's own writes also drop what it holds).
    Every read afterwards returns 8: the held 7 (learned from the old primary, whose keys
    the new epoch's DEL does not name) was flushed before the new epoch served."""
    with served(db, sentinel.url, "flost:") as (app, base), \
            served(db, sentinel.url, "flost:") as (_, writer_base):
        backend = get_policy(app.registry).backend
        assert backend.near_mode == "barrier"
        client = Client(base)
        assert client.json("GET", "/items/1")[1].get("X-Cache") == "MISS"
        primary, replica = sentinel.primary_port(), sentinel.replica_port()
        assert direct(primary).execute_command("WAIT", 1, 5000) == 1
        cut_replication(sentinel, primary, replica)
        try:
            assert client.json("PUT", "/items/1?v=7")[0]["version"] == 7
            assert tag_keys(direct(primary), "flost:", 1) == []
            for _ in range(2):  # a miss that fills, then a hit from the near cache
                data, headers = client.json("GET", "/items/1")
                assert data["version"] == 7
            assert headers.get("X-Cache") == "HIT" and held(backend)
            pings = backend._stream.pings_sent
            assert client.json("GET", "/items/1")[0]["version"] == 7
            assert backend._stream.pings_sent > pings, "the hit was not a near hit"
            sentinel.stop_port(primary, signal.SIGKILL)
        finally:
            sentinel.send(replica, signal.SIGCONT)
        assert tag_keys(direct(replica), "flost:", 1), "the DEL was replicated after all"
        sentinel.sentinel().execute_command("SENTINEL", "FAILOVER", sentinel.service)
        assert sentinel.wait_switched(primary) == replica

        writer = Client(writer_base)

        def written():
            data, _ = writer.json("PUT", "/items/1?v=8")
            return data["version"] == 8

        poll(written, 20, "a write on the new primary")
        seen = []

        def fresh_hit():
            data, headers = client.json("GET", "/items/1")
            seen.append((data["version"], headers.get("X-Cache")))
            assert data["version"] == 8, f"a value held from the old primary was served: {seen}"
            return headers.get("X-Cache") == "HIT" and held(backend)

        poll(fresh_hit, 20, "near hits on the new primary")
        pings = backend._stream.pings_sent
        assert client.json("GET", "/items/1")[0]["version"] == 8
        assert backend._stream.pings_sent > pings, "no barrier: the hit was not a near hit"
        client.close()
        writer.close()
    print(f"\n[failover, near cache] reads after it (version, X-Cache): {seen[:3]}…{seen[-2:]}")


def test_a_failover_flushes_the_near_cache_before_the_new_epoch_serves(sentinel):
    """A reader holds v1; a failover; another client replaces it by v2 on the new primary
    (keys of the new epoch, which name none of the held value's).  The reader serves v2:
    what it held from the old primary was flushed before it served again."""
    reader = RedisBackend(sentinel.url, prefix="fflush:", near_cache_bytes=NEAR, tracking=True)
    writer = RedisBackend(sentinel.url, prefix="fflush:")
    try:
        poll(lambda: reader._stream.healthy, 10, "the tracking stream")
        found = reader.lookup("k", "t1", 5, 60, ("t",))
        assert reader.fill("k", "t1", b"v1", 60, ("t",), found.versions)
        poll(lambda: reader.get("k", ("t",)) == b"v1" and held(reader), 10, "v1 held")
        old = reader._stream.node
        sentinel.failover()

        def replaced():
            writer.invalidate(keys=["k"], tags=["t"])
            found = writer.lookup("k", "t2", 5, 60, ("t",))
            return writer.fill("k", "t2", b"v2", 60, ("t",), found.versions)

        poll(replaced, 20, "v2 written on the new primary")
        seen = []

        def fresh():
            try:
                seen.append(reader.get("k", ("t",)))
            except reader.errors:
                return False  # (the reader's connections reconnect)
            assert seen[-1] != b"v1", "the value held from the old primary was served"
            return seen[-1] == b"v2" and held(reader) and reader._stream.node != old

        poll(fresh, 20, "v2 held from the new primary")
    finally:
        reader.close()
        writer.close()


def test_reads_racing_the_streams_first_handshake_leave_the_stream_alone(sentinel, caplog):
    """An application's first requests arrive while its tracking stream is still connecting
    (every start).  A read answered before the stream knew its node proves nothing about
    epochs (it is not inserted, and the handshake flushes anyway): the stream is not
    dropped, so no "connection lost" warning and no second connection.  Such reads used to
    drop the just-connected stream in 16 of 20 starts."""
    raced = 0
    for i in range(5):
        backend = RedisBackend(sentinel.url, prefix=f"fstart{i}:", near_cache_bytes=NEAR,
                               tracking=True)
        try:
            stream = backend._stream
            raced += not stream.healthy

            def read():
                for _ in range(200):
                    backend.lookup("hot", "t", 5, 60)

            threads = [threading.Thread(target=read) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            # a barrier answered now is one on a connection nobody dropped (a dropped
            # socket answers no PING): then count the connections
            poll(lambda: stream.barrier(1.0), 15, "a barrier on the stream")
            assert (stream.connections, stream.losses) == (1, 0), f"start {i}"
        finally:
            backend.close()
    assert raced >= 1  # the reads really began before the stream was up
    lost = [r.getMessage() for r in caplog.records if "connection lost" in r.getMessage()]
    assert lost == []


def test_a_primary_demoted_by_hand_never_answers_from_the_near_cache(sentinel):
    """An operator's REPLICAOF kills no client: the tracking connection stays on a node
    that now replicates another history, and its PINGs are still answered.  The probe
    beside the barrier (INFO replication: "master of this epoch?") refuses the held value
    and flushes; the read then fails on ROLE (the policy fails open)."""
    backend = RedisBackend(sentinel.url, prefix="fdemote:", near_cache_bytes=NEAR,
                           tracking=True)
    try:
        assert backend.near_mode == "barrier"
        poll(lambda: backend._stream.healthy, 10, "the tracking stream")
        found = backend.lookup("k", "t1", 5, 60, ("t",))
        assert backend.fill("k", "t1", b"old", 60, ("t",), found.versions)
        poll(lambda: backend.get("k", ("t",)) == b"old" and held(backend), 10, "old held")
        assert backend.peek_after_barrier("k", ("t",)) == b"old"  # (early hits' read)
        primary, replica = sentinel.primary_port(), sentinel.replica_port()
        assert direct(primary).execute_command("WAIT", 1, 5000) == 1
        losses = backend._stream.losses
        direct(replica).replicaof("NO", "ONE")
        direct(primary).replicaof("127.0.0.1", replica)
        poll(lambda: direct(primary).info("replication").get("master_link_status") == "up", 10,
             "the old primary to replicate the new one")
        assert backend._stream.losses == losses, "the tracking connection was dropped anyway"
        # early hits' read waits for the same barrier and probe: never the held value
        assert backend.peek_after_barrier("k", ("t",)) is None
        with pytest.raises(NotPrimary):
            print(backend.get("k", ("t",)))
        # the stream's reader thread flushes when the probe's "not primary" answer arrives;
        # under load the read above may give up waiting for that round first (and still
        # refuse the held value): the flush follows
        poll(lambda: not held(backend), 10, "the near cache flushed")
        with pytest.raises(NotPrimary):
            backend.get("k", ("t",))  # and the held value is never served
    finally:
        backend.close()


def test_a_write_on_any_primary_empties_the_near_cache_before_it_returns(redis_cluster,
                                                                          redis_prefix):
    """Values on every primary are held by one client; another client (no near cache)
    invalidates them; right after its call returned, the first serves none of them."""
    reader = ClusterBackend(redis_cluster.url, prefix=redis_prefix, near_cache_bytes=NEAR,
                            tracking=True)
    writer = ClusterBackend(redis_cluster.url, prefix=redis_prefix)
    try:
        assert reader.near_mode == "barrier"
        streams = reader._tracked_near.stream
        poll(lambda: streams.healthy, 10, "a tracking stream on every primary")
        assert set(streams.streams) == {("127.0.0.1", p) for p in redis_cluster.ports}
        keys = [f"k{i}" for i in range(30)]
        assert {redis_cluster.node_of(f"{redis_prefix}v:{{{k}}}") for k in keys} == \
            set(redis_cluster.ports)
        for key in keys:
            found = reader.lookup(key, "t", 5, 60, (f"tag-{key}",))
            assert reader.fill(key, "t", key.encode(), 60, (f"tag-{key}",), found.versions)
        tracked = reader._tracked_near.tracked
        for key in keys:  # (the fill's own messages may void the first insert: poll)
            poll(lambda: reader.get(key, (f"tag-{key}",)) == key.encode()
                 and tracked.get(key) is not None, 10, f"{key} held")
        for i, key in enumerate(keys):  # half by key, half by tag
            writer.invalidate(keys=[key]) if i % 2 else writer.invalidate(tags=[f"tag-{key}"])
            assert reader.get(key, (f"tag-{key}",)) is None, f"{key} served after its write"
    finally:
        reader.close()
        writer.close()


@pytest.mark.parametrize("read", ["get", "peek_after_barrier"])
def test_a_hit_waits_for_the_stream_of_every_primary_even_a_slow_one(redis_cluster,
                                                                     redis_prefix, read):
    """The reader thread (one for every primary's stream: StreamGroup) applies each
    message 0.1 s late (a busy process).  Another client invalidates values held from every
    primary; right after its call returns, the reader's next read is never the old value:
    its barrier waited for the ``PONG`` of every primary's stream, which its reader reads
    after the message.
    ``peek_after_barrier``: early hits' read, which serves the held value before the write."""
    reader = ClusterBackend(redis_cluster.url, prefix=redis_prefix, near_cache_bytes=NEAR,
                            tracking=True, socket_timeout=2.0)
    writer = ClusterBackend(redis_cluster.url, prefix=redis_prefix)
    try:
        keys = held_on_every_primary(redis_cluster, redis_prefix, reader, "s")
        streams, tracked = reader._tracked_near.stream, reader._tracked_near.tracked
        pings = sum(s.pings_sent for s in streams.streams.values())
        for stream in streams.streams.values():
            stream.on_keys = late(stream.on_keys, 0.1)
        reading = getattr(reader, read)
        for key in keys:
            if read == "peek_after_barrier":
                rounds = streams.joint.rounds
                assert reading(key) == key.encode(), (
                    f"{key} held but not served early: still held {tracked.get(key)!r}, "
                    f"rebuilds {streams.rebuilds}, healthy {streams.healthy}, rounds "
                    f"{rounds}->{streams.joint.rounds}, again {reading(key)!r}")
            writer.invalidate(keys=[key])
            assert reading(key) is None, f"{key} served after its write"
        assert sum(s.pings_sent for s in streams.streams.values()) > pings, "no barrier ran"
    finally:
        reader.close()
        writer.close()


def late(apply, delay: float):
    """``apply`` run ``delay`` seconds late, on the stream's reader thread."""
    def slowly(keys):
        time.sleep(delay)
        apply(keys)
    return slowly


def held_on_every_primary(redis_cluster, redis_prefix, reader, prefix: str) -> list[str]:
    """Fill and hold (in ``reader``'s near cache) a value from every primary; their keys."""
    streams = reader._tracked_near.stream
    poll(lambda: streams.healthy, 10, "a tracking stream on every primary")
    keys = [f"{prefix}{i}" for i in range(12)]
    assert {redis_cluster.node_of(f"{redis_prefix}v:{{{k}}}") for k in keys} == \
        set(redis_cluster.ports)
    for key in keys:
        found = reader.lookup(key, "t", 5, 60, ())
        assert reader.fill(key, "t", key.encode(), 60, (), found.versions)
    assert streams.barrier(5)  # the fills' own messages applied: nothing drops below
    tracked = reader._tracked_near.tracked
    for key in keys:  # (the fill's own messages may void the first insert: poll)
        poll(lambda: reader.get(key) == key.encode() and tracked.get(key) is not None, 10,
             f"{key} held")
    return keys


def test_one_reader_thread_applies_every_primarys_messages_with_no_barrier(redis_cluster,
                                                                            redis_prefix):
    """The Cluster's streams share one reader thread (``StreamGroup``), which reads each
    stream up to its ``PONG`` during a barrier round -- and, with no round at all, still
    reads every stream in turn: another client's writes on every primary drop the held
    values while this process runs no barrier (no read)."""
    reader = ClusterBackend(redis_cluster.url, prefix=redis_prefix, near_cache_bytes=NEAR,
                            tracking=True)
    writer = ClusterBackend(redis_cluster.url, prefix=redis_prefix)
    try:
        keys = held_on_every_primary(redis_cluster, redis_prefix, reader, "i")
        streams = reader._tracked_near.stream
        assert all(s._thread is None for s in streams.streams.values()), \
            "a reader thread per stream"
        assert streams.group._thread is not None and streams.group._thread.is_alive()
        rounds, tracked = streams.joint.rounds, reader._tracked_near.tracked
        writer.invalidate(keys=keys)
        poll(lambda: all(tracked.get(k) is None for k in keys), 10,
             "every primary's messages applied with no barrier")
        assert streams.joint.rounds == rounds, "a barrier ran: the test proves nothing"
    finally:
        reader.close()
        writer.close()


def test_a_lost_stream_reconnects_in_its_group_and_the_near_cache_serves_again(
        redis_cluster, redis_prefix):
    """One primary's tracking connection breaks (``drop``): the group's thread flushes,
    reconnects that stream alone after its delay and keeps reading the others; held values
    then serve again after barriers, and another client's write on any primary still
    empties the near cache before its call returns."""
    reader = ClusterBackend(redis_cluster.url, prefix=redis_prefix, near_cache_bytes=NEAR,
                            tracking=True)
    writer = ClusterBackend(redis_cluster.url, prefix=redis_prefix)
    try:
        held_on_every_primary(redis_cluster, redis_prefix, reader, "a")
        streams = reader._tracked_near.stream
        lost = next(iter(streams.streams.values()))
        others = {s: s.connections for s in streams.streams.values() if s is not lost}
        before = lost.connections
        lost.drop()
        poll(lambda: lost.connections > before and streams.healthy, 10,
             "the lost stream reconnected")
        assert not held(reader), "the loss did not flush the near cache"
        assert {s: s.connections for s in others} == others, "another stream reconnected"
        keys = held_on_every_primary(redis_cluster, redis_prefix, reader, "b")
        for key in keys:
            writer.invalidate(keys=[key])
            assert reader.get(key) is None, f"{key} served after its write"
    finally:
        reader.close()
        writer.close()
