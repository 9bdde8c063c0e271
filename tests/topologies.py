"""Private multi-node Redis topologies for the tests: a 3-primary Redis Cluster and a
primary + replica watched by 3 sentinels.  Every process is started here on free ports,
in a temporary directory, and stopped by its pid; nothing else on the machine is touched.

Each topology offers what the single-server tests use of ``PrivateRedis``: ``url`` (the
cache/queue URL), ``client()``, ``pause()``/``resume()`` (SIGSTOP/SIGCONT every data node:
"Redis hangs"), ``stop()``/``start()`` (data lost, same ports).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest
import redis

from .conftest import free_port, wait_for_port


def _exe(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (Debian packages redis-server, redis-tools; "
                    ".ci/run installs them)", pytrace=False)
    return path


def poll(condition, timeout: float, message: str, interval: float = 0.05):
    """Poll ``condition`` until it returns a true value (returned) or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except (redis.RedisError, OSError) as exc:
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message} (last error: "
                         f"{last_error!r})")


def _node(port: int, **kw) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=kw.get("timeout", 2.0),
                       socket_connect_timeout=kw.get("timeout", 2.0))


class _Processes:
    def __init__(self, label: str) -> None:
        self.dir = tempfile.mkdtemp(prefix=f"examcache-{label}-")
        self.procs: dict[int, subprocess.Popen] = {}
        self.args: dict[int, list[str]] = {}

    def spawn(self, port: int, args: list[str]) -> None:
        self.args[port] = args
        log = open(os.path.join(self.dir, f"{port}.log"), "ab")
        self.procs[port] = subprocess.Popen([_exe("redis-server"), *args], stdout=log,
                                            stderr=subprocess.STDOUT)
        log.close()
        wait_for_port(port)

    def send(self, port: int, sig) -> None:
        proc = self.procs.get(port)
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)

    def stop_port(self, port: int, sig=signal.SIGTERM) -> None:
        """Stop one process (SIGTERM, or e.g. SIGKILL) and wait for it."""
        proc = self.procs.pop(port, None)
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.send_signal(sig)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def close(self) -> None:
        for port in list(self.procs):
            self.stop_port(port)
        shutil.rmtree(self.dir, ignore_errors=True)


class PrivateCluster(_Processes):
    """``n`` primaries (no replicas) made one cluster by ``redis-cli --cluster create``."""

    kind = "cluster"
    #: a call that times out costs its own timeout plus redis-py's slot re-discovery, which
    #: asks each node in turn (1 + n timeouts, measured 1.0-1.26 s with 0.25 s and n = 3)
    timeouts_per_failure = 5

    def __init__(self, n: int = 3) -> None:
        super().__init__("cluster")
        self.ports = [free_port() for _ in range(n)]
        self.bus_ports = {p: free_port() for p in self.ports}  # not port + 10000 (may be > 65535)
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports) + "/"

    def _args(self, port: int) -> list[str]:
        return ["--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                "--cluster-port", str(self.bus_ports[port]),
                "--cluster-config-file", os.path.join(self.dir, f"nodes-{port}.conf"),
                "--cluster-node-timeout", "5000", "--save", "", "--appendonly", "no",
                "--dir", self.dir, "--dbfilename", f"dump-{port}.rdb"]

    def start(self) -> None:
        created = all(os.path.exists(os.path.join(self.dir, f"nodes-{p}.conf"))
                      and os.path.getsize(os.path.join(self.dir, f"nodes-{p}.conf")) > 0
                      and p in self.args for p in self.ports)
        for port in self.ports:
            self.spawn(port, self._args(port))
        if not created:
            out = subprocess.run(
                [_exe("redis-cli"), "--cluster", "create",
                 *(f"127.0.0.1:{p}" for p in self.ports), "--cluster-replicas", "0",
                 "--cluster-yes"], capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        self.wait_ok()

    def wait_ok(self, timeout: float = 30.0) -> None:
        def ok():
            for port in self.ports:
                info = _node(port).cluster("info")
                if info.get("cluster_state") != "ok" or int(info.get("cluster_slots_ok", 0)) != 16384:
                    return False
            return True

        poll(ok, timeout, "cluster_state:ok on every node")

    def pause(self) -> None:
        for port in self.ports:
            self.send(port, signal.SIGSTOP)

    def resume(self) -> None:
        for port in self.ports:
            self.send(port, signal.SIGCONT)

    def stop(self) -> None:
        for port in self.ports:
            self.stop_port(port)

    def client(self):
        from redis.cluster import ClusterNode, RedisCluster

        return RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", p) for p in self.ports],
                            socket_timeout=5.0)

    def node_of(self, key: str) -> int:
        """The port of the primary that owns ``key``'s slot now."""
        slot = _node(self.ports[0]).cluster("keyslot", key)
        for start, end, primary, *_ in _node(self.ports[0]).execute_command("CLUSTER SLOTS"):
            if start <= slot <= end:
                return int(primary[1])
        raise AssertionError(f"no node owns slot {slot}")

    def node_ids(self) -> dict[int, str]:
        return {p: _node(p).execute_command("CLUSTER MYID").decode() for p in self.ports}

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class PrivateSentinel(_Processes):
    """A primary, one replica and three sentinels (quorum 2) for service ``mymaster``."""

    kind = "sentinel"
    service = "mymaster"

    def __init__(self, down_after_ms: int = 5000) -> None:
        super().__init__("sentinel")
        self.data_ports = [free_port(), free_port()]  # [initial primary, initial replica]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.down_after_ms = down_after_ms
        self.url = ("redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
                    + f"/{self.service}/0")

    def _data_args(self, port: int, primary: int | None) -> list[str]:
        args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--repl-diskless-sync-delay", "0",
                "--dir", self.dir, "--dbfilename", f"dump-{port}.rdb"]
        return args + (["--replicaof", "127.0.0.1", str(primary)] if primary else [])

    def start(self) -> None:
        primary, replica = self.data_ports
        self.spawn(primary, self._data_args(primary, None))
        self.spawn(replica, self._data_args(replica, primary))
        poll(lambda: _node(replica).info("replication").get("master_link_status") == "up", 30,
             "the replica to sync")
        if not any(p in self.procs for p in self.sentinel_ports):
            # each sentinel is told its id, the replica and the other sentinels up front
            # (else discovering them takes a few hello/INFO periods)
            ids = {port: os.urandom(20).hex() for port in self.sentinel_ports}
            for port in self.sentinel_ports:
                conf = os.path.join(self.dir, f"sentinel-{port}.conf")
                if not os.path.exists(conf):
                    known = "".join(f"sentinel known-sentinel {self.service} 127.0.0.1 {p} "
                                    f"{ids[p]}\n" for p in self.sentinel_ports if p != port)
                    with open(conf, "w") as fh:
                        fh.write(f"port {port}\nbind 127.0.0.1\ndir {self.dir}\n"
                                 f"sentinel myid {ids[port]}\n"
                                 f"sentinel monitor {self.service} 127.0.0.1 {primary} 2\n"
                                 f"sentinel known-replica {self.service} 127.0.0.1 {replica}\n"
                                 + known +
                                 f"sentinel down-after-milliseconds {self.service} "
                                 f"{self.down_after_ms}\n"
                                 f"sentinel failover-timeout {self.service} 10000\n"
                                 f"sentinel parallel-syncs {self.service} 1\n")
                self.spawn(port, [conf, "--sentinel"])
        self.wait_ready()

    def sentinel(self, i: int = 0) -> redis.Redis:
        return _node(self.sentinel_ports[i])

    def primary_port(self) -> int:
        return int(self.sentinel().sentinel_get_master_addr_by_name(self.service)[1])

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Every sentinel knows the primary, a replica and the two other sentinels."""
        def ready():
            primary = self.primary_port()
            for i in range(3):
                s = self.sentinel(i)
                master = s.sentinel_master(self.service)
                if (int(master["port"]) != primary or master.get("num-other-sentinels", 0) < 2
                        or master.get("num-slaves", 0) < 1 or master.get("is_sdown")
                        or master.get("is_odown")):
                    return False
                if any(r.get("is_sdown") or r.get("master-link-status") != "ok"
                       for r in s.sentinel_slaves(self.service)):
                    return False
            return _node(primary).info("replication")["role"] == "master"

        poll(ready, timeout, "the sentinels to know the primary, the replica and each other",
             interval=0.1)

    def replica_port(self) -> int:
        primary = self.primary_port()
        return next(p for p in self.data_ports if p != primary)

    def failover(self, timeout: float = 30.0) -> int:
        """``SENTINEL FAILOVER``; waits until the old replica is the primary everywhere."""
        old = self.primary_port()
        self.sentinel().execute_command("SENTINEL", "FAILOVER", self.service)
        return self.wait_switched(old, timeout)

    def wait_switched(self, old: int, timeout: float = 30.0) -> int:
        new = poll(lambda: all(
            int(self.sentinel(i).sentinel_get_master_addr_by_name(self.service)[1]) != old
            for i in range(3)) and self.primary_port(), timeout, "the sentinels to switch")
        poll(lambda: _node(new).info("replication")["role"] == "master", timeout,
             "the new primary to be a primary")
        return new

    def pause(self) -> None:
        for port in self.data_ports:
            self.send(port, signal.SIGSTOP)

    def resume(self) -> None:
        for port in self.data_ports:
            self.send(port, signal.SIGCONT)

    def stop(self) -> None:
        for port in self.data_ports:
            self.stop_port(port)

    def client(self):
        from pyramid_examcache.topology import client_for

        return client_for(self.url, socket_timeout=5.0)

    def close(self) -> None:
        for port in list(self.procs):
            self.stop_port(port)
        shutil.rmtree(self.dir, ignore_errors=True)


class SharedRedis:
    """The machine's test Redis (``EXAMCACHE_TEST_REDIS``) as a topology."""

    kind = "redis"
    #: extra app settings for this topology (the tracked near cache: ``examcache.tracking``)
    settings: dict = {}

    def __init__(self, url: str, tracking: bool = False) -> None:
        self.url = url
        if tracking:
            self.kind = "redis+tracking"
            self.settings = {"examcache.tracking": "true"}

    def client(self):
        return redis.Redis.from_url(self.url)
