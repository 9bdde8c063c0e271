"""What the stateful property tests share: the keys and their tags, what a committed write
invalidates, the derandomized Hypothesis settings of the tracked-path machines, and the
Redis faults of the read-lease machine (a server that accepts ``DEBUG``, a stall)."""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time

import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from ..conftest import PrivateRedis, wait_for_port

#: key -> the tags its value is stored under ("c" has none)
KEYS = {"a": ("g1",), "b": ("g1", "g2"), "c": ()}
#: what a committed write of a key invalidates: the key, one of its tags, or both
MODE = st.sampled_from(["key", "tag", "both"])


def targets(key: str, mode: str) -> tuple[list[str], list[str]]:
    """``(keys, tags)`` a committed write of ``key`` invalidates in ``mode`` (a key without
    tags: the key)."""
    tags = KEYS[key]
    if mode == "key" or not tags:
        return [key], []
    if mode == "tag":
        return [], [tags[-1]]
    return [key], list(tags)


def derandomized(examples_env: str, examples: int, steps: int) -> settings:
    """The same interleavings every run: a stable run time in CI (set
    ``EXAMCACHE_TRACKING_RANDOM=1`` to explore new ones; ``examples_env`` sets how many)."""
    return settings(
        max_examples=int(os.environ.get(examples_env, str(examples))),
        stateful_step_count=steps,
        deadline=None,
        database=None,
        derandomize=not os.environ.get("EXAMCACHE_TRACKING_RANDOM"),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


def play(machine, steps, invariants) -> None:
    """Run a scripted interleaving through a machine: each ``(rule, kwargs)`` step, then
    every invariant; the machine is torn down whatever happens."""
    try:
        for rule_name, kwargs in steps:
            getattr(machine, rule_name)(**kwargs)
            for check in invariants:
                getattr(machine, check)()
    finally:
        machine.teardown()


def assert_saw(seen, events, label: str = "") -> None:
    """The script reached the interleavings it is there for (``events``: at least how many
    of each)."""
    short = {event: seen[event] for event in events if seen[event] < events[event]}
    assert not short, f"{label}expected at least {events}, saw {dict(seen)}"


class DebugRedis(PrivateRedis):
    """A private redis-server that accepts ``DEBUG`` (``DEBUG SLEEP``: a stall)."""

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port),
             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", self.dir,
             "--enable-debug-command", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)


class Stall:
    """Stalls Redis for ``ms``: ``sleep`` (``DEBUG SLEEP`` from its own connection, in a
    thread: nothing runs) or ``pause`` (``CLIENT PAUSE ms WRITE``: writes and scripts wait,
    reads and ``PING`` run). :meth:`start` returns once the stall is in effect."""

    def __init__(self, port: int, kind: str, ms: int) -> None:
        self.port, self.kind, self.ms = port, kind, ms
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def _sleep(self, client: redis.Redis) -> None:
        try:
            client.execute_command("DEBUG", "SLEEP", f"{self.ms / 1000}")
        except BaseException as exc:  # noqa: BLE001 -- reported by join()
            self.error = exc
        finally:
            client.close()

    def start(self) -> "Stall":
        client = redis.Redis(port=self.port, socket_timeout=10)
        if self.kind == "pause":
            client.execute_command("CLIENT", "PAUSE", str(self.ms), "WRITE")
            client.close()
            return self
        self.thread = threading.Thread(target=self._sleep, args=(client,), daemon=True)
        self.thread.start()
        probe = redis.Redis(port=self.port, socket_timeout=0.01)
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline:  # until a PING goes unanswered: asleep
                try:
                    probe.ping()
                except (redis.TimeoutError, redis.ConnectionError):
                    return self
                if not self.thread.is_alive():  # (slept and woke before a probe saw it)
                    return self
            raise AssertionError("DEBUG SLEEP never took effect")
        finally:
            probe.close()

    def join(self) -> None:
        if self.thread is not None:
            self.thread.join(10)
            assert not self.thread.is_alive() and self.error is None, self.error
