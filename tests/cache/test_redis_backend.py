"""Redis-only behaviour of the backend, on a private redis-server."""
from __future__ import annotations

import gc
import threading
import time

from pyramid_examcache.cache.backends.redis import RedisBackend


def clients(server) -> int:
    client = server.client()
    try:
        return len(client.client_list()) - 1  # not this one
    finally:
        client.close()


def test_a_thread_that_ends_releases_its_connection(private_redis):
    backend = RedisBackend(private_redis.url, prefix="conn:")
    try:
        answers, errors = [], []

        def work():
            try:
                answers.append(backend.get("k"))
            except BaseException as exc:  # noqa: BLE001 -- re-raised below
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors, errors[:3]
        assert answers == [None] * 8  # every thread talked to Redis
        gc.collect()
        deadline = time.monotonic() + 10
        while clients(private_redis) > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert clients(private_redis) == 0, "connections of ended threads are still open"
        backend.get("k")  # this thread's own connection
        assert clients(private_redis) == 1
    finally:
        backend.close()


def test_clear_treats_the_prefix_as_a_literal(private_redis):
    client = private_redis.client()
    client.set("app[1]:v:x", "ours")
    client.set("app1:v:x", "another app's key that the glob app[1]:* would match")
    client.set("app?:v:x", "a third")
    backend = RedisBackend(private_redis.url, prefix="app[1]:")
    try:
        backend.clear()
        assert client.get("app[1]:v:x") is None
        assert client.get("app1:v:x") is not None
        assert client.get("app?:v:x") is not None
    finally:
        backend.close()
        client.close()
