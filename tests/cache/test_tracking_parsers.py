"""The tracking connection on redis-py's pure-Python parser (issue 18): without hiredis,
redis-py >= 8 refused the maintenance-notification config its pool hands every connection,
so the stream dropped twice a second and the near cache never served. Here a process in
which ``import hiredis`` fails (as on a plain ``pip install``) -- redis-py then picks its
pure-Python parser -- builds the backend exactly as the add-on does and serves held values
for more than 5 s: one connection, no loss, and no Redis command per read. The same on a
private Redis Cluster: one stream per primary, all read by one thread through ``can_read``
(``StreamGroup``), across idle periods of that thread. Real Redis."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from ..topologies import PrivateCluster

SECONDS = 5.5

#: the start of both scripts: a process where ``import hiredis`` fails, its log kept
PRELUDE = textwrap.dedent('''
    import json, logging, sys, threading, time
    sys.modules["hiredis"] = None  # `import hiredis` fails: redis-py uses its own parser
    import redis, redis.connection, redis.utils
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(f"{record.levelname} {record.name} {record.getMessage()}")

    logger = logging.getLogger("pyramid_examcache")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(Keep())
    try:
        import hiredis  # noqa: F401
        hiredis_importable = True
    except ImportError:
        hiredis_importable = False
''')

SCRIPT = PRELUDE + textwrap.dedent('''
    from pyramid_examcache.cache.backends.redis import RedisBackend

    url, lease_ms, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    raw = redis.Redis.from_url(url)

    def stats():
        out = raw.info("commandstats")
        return {k.removeprefix("cmdstat_"): v["calls"] for k, v in out.items()}

    b = RedisBackend(url, prefix="pp:", near_cache_bytes=1 << 20, tracking=True,
                     socket_timeout=1.0, lease_ms=lease_ms)
    stream = b._stream
    assert stream.wait_healthy(10), f"the stream never became healthy: {stream.unavailable}"
    found = b.lookup("k", "tok", 5.0, 600, ("t",))
    assert found.status.name == "LEASED", found
    assert b.fill("k", "tok", b"v1", 600, ("t",), found.versions)
    deadline = time.monotonic() + 10
    while not (b.get("k", ("t",)) == b"v1" and b._tracked.get("k", ("t",)) is not None
               and (lease_ms == 0 or b.read_lease_valid())):
        assert time.monotonic() < deadline, "never held"
        time.sleep(0.01)

    stop = threading.Event()

    def noise():  # other keys under the prefix change all along: messages keep coming
        i = 0
        while not stop.is_set():
            raw.set(f"pp:noise:{i % 20}", i)
            i += 1
            stop.wait(0.005)

    writer = threading.Thread(target=noise)
    writer.start()
    connections, before, reads, wrong = stream.connections, stats(), 0, 0
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        for _ in range(200):
            reads += 1
            wrong += b.get("k", ("t",)) != b"v1"
    elapsed = time.monotonic() - started
    after = stats()
    stop.set()
    writer.join()
    print(json.dumps({
        "parser": redis.connection.DefaultParser.__name__, "redis": redis.__version__,
        "hiredis_importable": hiredis_importable, "elapsed": elapsed, "reads": reads,
        "wrong": wrong, "connections": connections, "connections_after": stream.connections,
        "losses": stream.losses, "unavailable": stream.unavailable,
        "commands": {k: after.get(k, 0) - before.get(k, 0) for k in after
                     if after.get(k, 0) != before.get(k, 0)},
        "messages": stream._messages, "records": records}))
    b.close()
''')


@pytest.mark.parametrize("lease_ms", [0, 1000], ids=["barrier", "read-lease"])
def test_the_pure_python_parser_keeps_the_stream_and_serves_held_values(private_redis,
                                                                        lease_ms):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, private_redis.url, str(lease_ms),
                           str(SECONDS)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print({k: v for k, v in out.items() if k != "records"})
    assert out["hiredis_importable"] is False
    assert "hiredis" not in out["parser"].lower()  # redis-py's pure-Python parser
    assert out["elapsed"] >= 5.0 and out["reads"] >= 1000 and out["wrong"] == 0
    # one connection all along: no reconnection, so no flush
    assert out["connections"] == out["connections_after"] == 1
    assert out["losses"] == 0 and out["unavailable"] is None
    assert out["messages"] > 20  # the noise's invalidation messages were parsed all along
    commands = out["commands"]
    commands.pop("set", None)   # the noise writer's
    commands.pop("info", None)  # the measurement's
    # held values are served with no command: no read reached Redis (in barrier mode a
    # barrier that misses its deadline on a busy machine falls back to one validated read,
    # hence the allowance of one in a thousand; a broken stream would validate every read) ...
    assert commands.get("hmget", 0) <= out["reads"] // 1000, commands
    if lease_ms:  # ... and under a lease nothing per read at all (only the lease keeper's)
        assert sum(commands.values()) < out["reads"] / 100, commands
    else:  # ... with a barrier per read, only the shared PINGs on the tracking connection
        assert sum(v for k, v in commands.items() if k != "ping") < out["reads"] / 100
    assert [r for r in out["records"] if not r.startswith("DEBUG")] == []


#: the Cluster run: reads in bursts of READ_BURST s, each followed by GAP s with no read (no
#: barrier ``PING``: the group's reader waits in ``can_read``, StreamGroup.IDLE at a time),
#: half of the gaps with another client's writes (messages to read), half silent
CLUSTER_SECONDS, READ_BURST, GAP = 3.0, 0.2, 0.3

CLUSTER_SCRIPT = PRELUDE + textwrap.dedent('''
    from pyramid_examcache.cache.backends.cluster import ClusterBackend
    from pyramid_examcache.cache.backends.tracking import StreamGroup

    url, seconds, burst, gap = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), \\
        float(sys.argv[4])
    # as the add-on builds it for a redis+cluster:// URL (backends.make_backend)
    b = ClusterBackend(url, prefix="pp:", socket_timeout=1.0, near_cache_bytes=1 << 20,
                       tracking=True)
    writer = ClusterBackend(url, prefix="pp:", socket_timeout=1.0)  # another client
    streams, tracked = b._tracked_near.stream, b._tracked_near.tracked

    def poll(condition, what, timeout=10.0):
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"never {what()}"
            time.sleep(0.01)

    poll(lambda: streams.healthy, lambda: f"a healthy stream on every primary (unavailable: "
         f"{[s.unavailable for s in streams.streams.values()]})")
    nodes = {(n.host, int(n.port)): redis.Redis(host=n.host, port=n.port)
             for n in b.client.get_primaries()}
    assert set(streams.streams) == set(nodes), (streams.streams, nodes)

    def stats():
        out = {}
        for address, node in nodes.items():
            for name, v in node.info("commandstats").items():
                out[f"{address[1]}:{name.removeprefix('cmdstat_')}"] = v["calls"]
        return out

    def node_of(name):
        node = b.client.get_node_from_key(name)
        return node.host, int(node.port)

    def owner(key):
        return node_of(f"pp:v:{{{key}}}")

    keys = [f"k{i}" for i in range(12)]
    assert {owner(k) for k in keys} == set(nodes), "no held value on some primary"
    values = {k: f"v1:{k}".encode() for k in keys}
    for key in keys:
        found = b.lookup(key, "tok", 5.0, 600, ("t",))
        assert found.status.name == "LEASED", found
        assert b.fill(key, "tok", values[key], 600, ("t",), found.versions)
    assert streams.barrier(5)  # the fills' own messages applied
    poll(lambda: all(b.get(k, ("t",)) == values[k] and tracked.get(k, ("t",)) is not None
                     for k in keys), lambda: "all held")

    barriers = {"calls": 0, "failed": 0}
    plain_barrier = streams.barrier

    def counted(timeout):
        ok = plain_barrier(timeout)
        barriers["calls"] += 1
        barriers["failed"] += not ok
        return ok

    streams.barrier = counted  # the near cache's barriers, counted (and unchanged)
    stop, quiet = threading.Event(), threading.Event()

    by_node = {node_of(f"pp:noise:{i}"): f"pp:noise:{i}" for i in range(50)}
    assert set(by_node) == set(nodes)
    noise_keys = list(by_node.values())  # one per primary: each gets every third write

    def noise():  # other keys under the prefix, on every primary, change all along
        i = 0
        while not stop.is_set():
            if not quiet.is_set():
                writer.client.set(noise_keys[i % len(noise_keys)], i)
                i += 1
            stop.wait(0.005)

    def messages():
        return {a[1]: s._messages for a, s in streams.streams.items()}

    thread = threading.Thread(target=noise)
    thread.start()
    connections = {a[1]: s.connections for a, s in streams.streams.items()}
    before, reads, wrong, gaps = stats(), 0, 0, []
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        burst_start = time.monotonic()
        while time.monotonic() - burst_start < burst:
            for _ in range(20):
                key = keys[reads % len(keys)]
                reads += 1
                wrong += b.get(key, ("t",)) != values[key]
        silent = len(gaps) % 2 == 1
        quiet.set() if silent else quiet.clear()
        seen, pings = messages(), sum(s.pings_sent for s in streams.streams.values())
        time.sleep(gap)  # an idle period of the group's reader, not a proof
        gaps.append({"silent": silent, "pings": sum(s.pings_sent for s in
                                                    streams.streams.values()) - pings,
                     "messages": {p: n - seen[p] for p, n in messages().items()}})
        quiet.clear()
    elapsed = time.monotonic() - started
    after = stats()
    read_barriers = dict(barriers)
    stop.set()
    thread.join()

    written = []  # another client's write, then this one's next read, on every primary
    for key in [next(k for k in keys if owner(k) == a) for a in nodes]:
        served = b.get(key, ("t",))
        writer.invalidate(keys=[key])
        found = writer.lookup(key, "w", 5.0, 600, ("t",))
        new = f"v2:{key}".encode()
        filled = found.status.name == "LEASED" and writer.fill(key, "w", new, 600, ("t",),
                                                               found.versions)
        written.append({"key": key, "port": owner(key)[1], "held_before": served == values[key],
                        "filled": bool(filled), "next_read": (b.get(key, ("t",)) or b"").decode(),
                        "new": new.decode(), "barrier": plain_barrier(5)})
    print(json.dumps({
        "parser": redis.connection.DefaultParser.__name__, "redis": redis.__version__,
        "hiredis_importable": hiredis_importable,
        "hiredis_available": redis.utils.HIREDIS_AVAILABLE, "idle": StreamGroup.IDLE,
        "elapsed": elapsed, "reads": reads, "wrong": wrong, "gaps": gaps,
        "connections": connections,
        "connections_after": {a[1]: s.connections for a, s in streams.streams.items()},
        "losses": sum(s.losses for s in streams.streams.values()),
        "unavailable": [s.unavailable for s in streams.streams.values() if s.unavailable],
        "rebuilds": streams.rebuilds, "read_barriers": read_barriers, "barriers": barriers,
        "commands": {k: after.get(k, 0) - before.get(k, 0) for k in after
                     if after.get(k, 0) != before.get(k, 0)},
        "written": written, "records": records}))
    writer.close()
    b.close()
''')


def test_the_pure_python_parser_keeps_every_primarys_stream_on_a_cluster():
    """The Cluster's near cache (one stream per primary, one reader thread for all of them:
    ``StreamGroup``, which polls with ``can_read``) on the pure-Python parser: held values
    are served with no command per read through several idle periods of the reader (with
    and without messages), one connection per primary all along, and another client's
    write on each primary is seen by the next read, its barrier succeeding."""
    cluster = PrivateCluster()
    try:
        cluster.start()
        proc = subprocess.run([sys.executable, "-c", CLUSTER_SCRIPT, cluster.url,
                               str(CLUSTER_SECONDS), str(READ_BURST), str(GAP)],
                              capture_output=True, text=True, timeout=120)
    finally:
        cluster.close()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print({k: v for k, v in out.items() if k != "records"})
    assert out["hiredis_importable"] is False and out["hiredis_available"] is False
    assert "hiredis" not in out["parser"].lower()  # redis-py's pure-Python parser
    ports = {str(p) for p in cluster.ports}
    assert out["elapsed"] >= CLUSTER_SECONDS and out["reads"] >= 500 and out["wrong"] == 0
    # one connection per primary all along: no reconnection, so no flush
    assert set(out["connections"]) == ports
    assert set(out["connections_after"].values()) == set(out["connections"].values()) == {1}
    assert out["losses"] == 0 and out["unavailable"] == [] and out["rebuilds"] == 1
    # several idle periods of the group's reader (no PING in flight), each many IDLEs long;
    # in the noisy ones every primary's messages were read (through can_read) meanwhile
    gaps = out["gaps"]
    assert len(gaps) >= 4 and GAP >= 5 * out["idle"]
    assert all(g["pings"] == 0 for g in gaps), gaps
    assert all(min(g["messages"].values()) > 0 for g in gaps if not g["silent"]), gaps
    assert any(g["silent"] for g in gaps)
    # held values are served with no command: no read reached Redis (a barrier that misses
    # its deadline on a busy machine falls back to one validated read, hence the allowance of
    # one in a thousand; a broken stream would validate every read)
    reads_sent = {k: v for k, v in out["commands"].items()
                  if k.split(":")[1] in ("get", "hmget", "pttl", "evalsha", "eval")}
    failed = out["read_barriers"]["failed"]
    assert failed <= out["reads"] // 1000, out["read_barriers"]
    assert sum(reads_sent.values()) <= 3 * failed, reads_sent  # (HMGET, PTTL, GET per read)
    assert out["read_barriers"]["calls"] >= out["reads"] - failed
    # another client's write on each primary: the next read returns the new value, and a
    # barrier after it succeeds
    assert {str(w["port"]) for w in out["written"]} == ports
    for w in out["written"]:
        assert w["held_before"] and w["filled"] and w["next_read"] == w["new"], w
        assert w["barrier"], w
    assert out["barriers"]["failed"] == failed, out["barriers"]  # none failed in the writes
    assert [r for r in out["records"] if not r.startswith("DEBUG")] == []
