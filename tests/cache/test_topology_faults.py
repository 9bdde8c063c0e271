"""Faults that only multi-node Redis has: a Sentinel failover (planned, and after SIGKILL
of a primary whose last DEL never reached the replica) and a Cluster resharding, under
readers and a writer, through real HTTP (waitress), PostgreSQL and private servers
(tests/topologies.py).

A read is stale when it returns a version older than one whose PUT response had
already returned when the read was sent (the G2 definition of tests/cache/servers.py)."""
from __future__ import annotations

import bisect
import json
import signal
import subprocess
import threading
import time
from contextlib import contextmanager

import pytest
import redis

from pyramid_examcache.cache import get_policy
from pyramid_examcache.cache.variants import origin_part

from ..topologies import PrivateCluster, poll
from . import itemapp
from .servers import Client, thread_server

pytestmark = pytest.mark.slow


@pytest.fixture
def db(cache_pg_url):
    itemapp.create_schema(cache_pg_url, n_items=60)
    return cache_pg_url


@pytest.fixture
def cluster():
    own = PrivateCluster()
    try:
        own.start()
        yield own
    finally:
        own.close()


@contextmanager
def served(db, url, prefix):
    app = itemapp.make_app(db, **{"examcache.redis_url": url, "examcache.key_prefix": prefix,
                                  "examcache.socket_timeout": "0.25",
                                  "examcache.breaker_reset": "0.5",
                                  "examcache.relay_interval": "0.5",
                                  "examcache.relay_after": "0.5"})
    # every fault test runs with the near cache on (the default: tracked, fenced_near.py)
    assert get_policy(app.registry).backend.near_mode == "barrier"
    with thread_server(app, threads=16) as base:
        yield app, base
    app.registry["test.engine"].dispose()
    get_policy(app.registry).close()


class Load:
    """One writer (PUT v=1, 2, …) and ``readers`` readers of ``/items/<item>`` until stopped."""

    def __init__(self, base: str, item: int, readers: int = 4) -> None:
        self.base, self.item = base, item
        self.stop = threading.Event()
        self.returned: list[tuple[float, int]] = []
        self.reads: list[tuple[float, int, int | None, str | None]] = []
        self.put_statuses: list[int] = []
        self.errors: list[BaseException] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._writer)]
        self.threads += [threading.Thread(target=self._reader) for _ in range(readers)]

    def _writer(self) -> None:
        client = Client(self.base)
        try:
            v = 0
            while not self.stop.is_set():
                v += 1
                status, _, _ = client.request("PUT", f"/items/{self.item}?v={v}")
                self.put_statuses.append(status)
                if status == 200:
                    self.returned.append((time.monotonic(), v))
                time.sleep(0.005)
        except BaseException as exc:  # noqa: BLE001 -- checked by the test
            self.errors.append(exc)
        finally:
            client.close()

    def _reader(self) -> None:
        client = Client(self.base)
        try:
            while not self.stop.is_set():
                started = time.monotonic()
                status, headers, body = client.request("GET", f"/items/{self.item}")
                version = json.loads(body)["version"] if status == 200 else None
                with self.lock:
                    self.reads.append((started, status, version, headers.get("X-Cache")))
        except BaseException as exc:  # noqa: BLE001
            self.errors.append(exc)
        finally:
            client.close()

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def check(self, after: float = 0.0) -> dict:
        """No hung thread, no error, no 5xx; counts of stale reads overall and after ``after``."""
        assert not any(t.is_alive() for t in self.threads), "a reader or the writer hung"
        assert not self.errors, self.errors[:3]
        statuses = [r[1] for r in self.reads] + self.put_statuses
        assert statuses and all(s == 200 for s in statuses), sorted(set(statuses))
        times = [t for t, _ in self.returned]
        stale = stale_after = 0
        for started, _, version, _ in self.reads:
            i = bisect.bisect_left(times, started)
            known = self.returned[i - 1][1] if i else 0
            if version < known:
                stale += 1
                stale_after += started >= after
        return {"reads": len(self.reads), "writes": len(self.returned), "stale": stale,
                "stale_after": stale_after,
                "hits_after": sum(1 for r in self.reads if r[0] >= after and r[3] == "HIT")}


def direct(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)


def value_keys(client: redis.Redis, prefix: str, item: int) -> list[bytes]:
    """The names of cached values of ``/items/<item>`` on one node (any epoch)."""
    return [k for k in client.scan_iter(match=f"{prefix}*v:*", count=1000)
            if f"@view:item:{item}#" in k.decode()]


def view_key(prefix: str, item: int, base: str) -> str:
    """The cluster key of ``/items/<item>``'s entry as served at ``base`` (its origin)."""
    origin = origin_part({"HTTP_HOST": base.split("://", 1)[1].rstrip("/"),
                          "wsgi.url_scheme": "http"})
    return f"{prefix}v:{{@view:item:{item}{origin}}}"


def tag_keys(client: redis.Redis, prefix: str, item: int) -> list[bytes]:
    """The names of the implicit tag of ``/items/<item>`` (``@key:item:<item>``, deleted by
    the PUT's invalidation) on one node (any epoch)."""
    return [k for k in client.scan_iter(match=f"{prefix}*t:*", count=1000)
            if k.decode().endswith(f"t:@key:item:{item}")]


def cut_replication(sentinel, primary: int, replica: int) -> None:
    """Leave the replica paused (SIGSTOP) and disconnected from the primary, so that the
    primary acknowledges writes the replica will never get.  (A paused replica alone is not
    enough: its kernel keeps receiving the stream, which it reads when resumed.)  The link
    is closed from the replica's side, then the replica is stopped before its replication
    cron (once a second) reconnects; checked on the primary, retried if it did reconnect."""
    for _ in range(5):
        direct(replica).execute_command("CLIENT", "KILL", "TYPE", "master")
        sentinel.send(replica, signal.SIGSTOP)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            if direct(primary).info("replication")["connected_slaves"] == 0:
                return
            time.sleep(0.02)
        sentinel.send(replica, signal.SIGCONT)
        poll(lambda: direct(replica).info("replication")["master_link_status"] == "up", 10,
             "the replica to reconnect")
    raise AssertionError("could not cut the replica off its primary")


def test_sentinel_failover_under_load_no_5xx_and_no_stale_read(db, sentinel):
    """SENTINEL FAILOVER while a writer and readers run: every response 200, 0 stale reads
    once the failover completed (and none during it either), and hits again afterwards."""
    with served(db, sentinel.url, "fo:") as (app, base):
        with Load(base, 1) as load:
            poll(lambda: len(load.returned) >= 30 and len(load.reads) >= 60, 30,
                 "load before the failover")
            old = sentinel.primary_port()
            sentinel.failover()
            done = time.monotonic()
            # the +switch-master subscriber told the backend (every thread reconnects)
            poll(lambda: get_policy(app.registry).backend._generation >= 1, 10,
                 "the backend to hear +switch-master")
            # the old primary is demoted (a replica of the new one) while clients may still
            # hold connections to it: reads there must not be served
            poll(lambda: direct(old).info("replication")["role"] == "slave", 30,
                 "the old primary to be demoted")
            demoted = time.monotonic()
            poll(lambda: len([t for t, _ in list(load.returned) if t > demoted]) >= 30, 30,
                 "writes after the demotion")
        result = load.check(after=done)
    print(f"\n[failover under load] primary {old} -> {sentinel.primary_port()}: {result}")
    assert sentinel.primary_port() != old
    assert result["reads"] >= 100
    assert result["stale_after"] == 0
    assert result["stale"] == 0
    assert result["hits_after"] > 0, "the cache was not used again after the failover"


def test_an_unreplicated_del_lost_in_a_failover_never_resurrects_the_value(db, sentinel):
    """The primary acknowledges a PUT's DEL while the replica is paused, then dies (SIGKILL)
    before the replica has it; the replica is promoted still holding the old value.
    The cache must serve the new version, never the resurrected one."""
    with served(db, sentinel.url, "lost:") as (app, base):
        client = Client(base)
        assert client.json("GET", "/items/1")[1].get("X-Cache") == "MISS"
        assert client.json("GET", "/items/1")[1].get("X-Cache") == "HIT"
        primary, replica = sentinel.primary_port(), sentinel.replica_port()
        assert direct(primary).execute_command("WAIT", 1, 5000) == 1  # the value is replicated
        assert value_keys(direct(replica), "lost:", 1), "the cached value is not on the replica"
        assert tag_keys(direct(replica), "lost:", 1), "its tag version is not on the replica"

        cut_replication(sentinel, primary, replica)
        try:
            data, _ = client.json("PUT", "/items/1?v=7")  # commit + DEL on the primary only
            assert data["version"] == 7
            assert tag_keys(direct(primary), "lost:", 1) == [], "the DEL did not reach the primary"
            sentinel.stop_port(primary, signal.SIGKILL)
        finally:
            sentinel.send(replica, signal.SIGCONT)
        # the replica never received the DEL: it still holds the invalidated value, valid
        assert tag_keys(direct(replica), "lost:", 1), "the DEL was replicated after all"
        sentinel.sentinel().execute_command("SENTINEL", "FAILOVER", sentinel.service)
        assert sentinel.wait_switched(primary) == replica
        assert value_keys(direct(replica), "lost:", 1) and tag_keys(direct(replica), "lost:", 1), \
            "the promoted replica does not hold the old value and its tag version"

        seen = []

        def fresh_hit():
            data, headers = client.json("GET", "/items/1")
            seen.append((data["version"], headers.get("X-Cache")))
            assert data["version"] == 7, f"the value invalidated before the failover came back: {seen}"
            return headers.get("X-Cache") == "HIT"

        poll(fresh_hit, 20, "hits on the new primary")
        client.close()
    print(f"\n[lost DEL] reads after the failover (version, X-Cache): {seen[:3]}…{seen[-2:]} "
          f"({len(seen)} reads)")


def test_cluster_resharding_under_load_no_5xx_and_no_stale_read(db, cluster):
    """``redis-cli --cluster reshard`` moves the slot of a cached key (and the slots before
    it on its node) to another node while a writer and readers run."""
    prefix = "rs:"
    with served(db, cluster.url, prefix) as (app, base):
        # the item whose value key sits nearest the start of its node's slot range: the
        # reshard moves the lowest slots of a node first, so few slots need to move
        ranges = {int(p[1]): (s, e) for s, e, p, *_ in
                  direct(cluster.ports[0]).execute_command("CLUSTER SLOTS")}
        owner = {}
        for item in range(1, 61):
            key = view_key(prefix, item, base)
            slot = direct(cluster.ports[0]).cluster("keyslot", key)
            port = next(p for p, (s, e) in ranges.items() if s <= slot <= e)
            owner[item] = (slot - ranges[port][0], slot, port)
        item = min(owner, key=lambda i: owner[i][0])
        distance, slot, source = owner[item]
        target = next(p for p in cluster.ports if p != source)
        ids = cluster.node_ids()
        with Load(base, item) as load:
            poll(lambda: len(load.returned) >= 20 and any(r[3] == "HIT" for r in list(load.reads)),
                 30, "load with hits before the resharding")
            assert cluster.node_of(view_key(prefix, item, base)) == source
            out = subprocess.run(
                ["redis-cli", "--cluster", "reshard", f"127.0.0.1:{source}",
                 "--cluster-from", ids[source], "--cluster-to", ids[target],
                 "--cluster-slots", str(distance + 1), "--cluster-yes"],
                capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
            moved = time.monotonic()
            poll(lambda: len([t for t, _ in list(load.returned) if t > moved]) >= 20, 30,
                 "writes after the resharding")
        result = load.check(after=moved)
        assert cluster.node_of(view_key(prefix, item, base)) == target
        # (the writer's invalidations make LEASE drop and refill it: poll, do not expect it now)
        poll(lambda: value_keys(direct(target), prefix, item), 10, "the cached key on its new node")
    print(f"\n[reshard] {distance + 1} slots (slot {slot}) {source} -> {target}: {result}")
    assert result["reads"] >= 100
    assert result["stale"] == 0
    assert result["hits_after"] > 0


def test_a_demoted_primary_never_answers_a_read(sentinel):
    """Sentinel kills a demoted primary's clients (CLIENT KILL in its reconfiguration), but
    an operator's REPLICAOF, or a set-up where CLIENT is renamed, does not: the backend's
    connection then stays on a node that now replicates another history.  Every batch ends
    with ROLE, so such a node's answers are refused (the policy fails open) instead of
    served -- here the old epoch's value, frozen on the new primary, would be stale."""
    from pyramid_examcache.cache.backends.failover import NotPrimary
    from pyramid_examcache.cache.backends.redis import RedisBackend

    backend = RedisBackend(sentinel.url, prefix="role:")
    try:
        found = backend.lookup("k", "t1", 5, 60, ("t",))
        assert backend.fill("k", "t1", b"old", 60, ("t",), found.versions)
        primary, replica = sentinel.primary_port(), sentinel.replica_port()
        assert direct(primary).execute_command("WAIT", 1, 5000) == 1
        assert backend.get("k", ("t",)) == b"old"
        # by hand, without the sentinels: promote the replica, demote the primary under it
        direct(replica).replicaof("NO", "ONE")
        direct(primary).replicaof("127.0.0.1", replica)
        poll(lambda: direct(primary).info("replication").get("master_link_status") == "up", 10,
             "the old primary to replicate the new one")
        with pytest.raises(NotPrimary):
            print(backend.get("k", ("t",)))
    finally:
        backend.close()


def test_cluster_scripts_reach_every_primary(redis_cluster, redis_prefix):
    """After SCRIPT FLUSH everywhere, the first call loads the scripts (on every primary:
    redis-py sends SCRIPT LOAD to all of them) and keys on every node work."""
    from pyramid_examcache.cache.backends.cluster import ClusterBackend

    for port in redis_cluster.ports:
        direct(port).script_flush()
    backend = ClusterBackend(redis_cluster.url, prefix=redis_prefix)
    try:
        keys = [f"k{i}" for i in range(30)]  # slots on every node
        assert {redis_cluster.node_of(f"{redis_prefix}v:{{{k}}}") for k in keys} == \
            set(redis_cluster.ports)
        for key in keys:
            found = backend.lookup(key, "t", 5, 60, ("tag",))
            assert backend.fill(key, "t", key.encode(), 60, ("tag",), found.versions)
        assert [backend.get(k) for k in keys] == [k.encode() for k in keys]
        for port in redis_cluster.ports:
            assert direct(port).script_exists(backend._lease.sha, backend._fill.sha) == [True, True]
    finally:
        backend.close()
