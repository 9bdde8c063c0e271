"""Issue 18, finding 9: a ``get_or_set`` value JSON cannot hold fails the same way on
every call, through ``request.cache``, on ``memory://`` and on a real Redis.

Before: the first call raised a bare ``TypeError``, the next ones (the lease released
into a bypass marker, or still held) returned the value uncached, then it raised again;
a tuple came back as a list from a miss but as a tuple from a bypass.  Now every call
raises :class:`NotJSONValue` (a ``TypeError``) naming the key and the JSON-only rule, a
waiter on the same cold key is told at once (the lease is released on the failure), and
every path returns what JSON gives back (tuples documented as coming back as lists).
"""
from __future__ import annotations

import datetime
import threading
import time

import pytest
from pyramid.config import Configurator
from webtest import TestApp

from pyramid_examcache.cache import get_policy
from pyramid_examcache.cache.codec import NotJSONValue

from ..topologies import poll

LOCK_TIMEOUT = 5.0  # what a stalled waiter would wait (the default lock/wait timeout)


class Gate:
    """The slow view's creator: says it is loading, then waits to be let go."""

    def __init__(self) -> None:
        self.loading, self.go = threading.Event(), threading.Event()


def make_app(url: str, prefix: str, gate: Gate):
    def dated(request):
        key = f"when:{request.matchdict['id']}"
        return request.cache.get_or_set(key, lambda: {"at": datetime.date(2024, 1, 2)})

    def slow_dated(request):
        def create():
            gate.loading.set()
            gate.go.wait(30)
            return {"at": datetime.date(2024, 1, 2)}

        return request.cache.get_or_set(f"when:{request.matchdict['id']}", create)

    def nested_set(request):
        return request.cache.get_or_set("labels", lambda: {"labels": {"a", "b"}})

    def pair(request):
        if request.params.get("dirty"):  # the transaction wrote: get_or_set bypasses the cache
            request.cache.invalidate("something")
        value = request.cache.get_or_set(f"pair:{request.matchdict['id']}", lambda: (1, (2, 3)))
        return {"outer": type(value).__name__, "inner": type(value[1]).__name__,
                "value": value}

    settings = {"examcache.redis_url": url, "examcache.key_prefix": prefix,
                "examcache.lock_timeout": str(LOCK_TIMEOUT)}
    with Configurator(settings=settings) as config:
        config.include("pyramid_tm")
        config.include("pyramid_examcache.cache")
        for name, path, view in (("dated", "/when/{id}", dated),
                                 ("slow", "/slow/{id}", slow_dated),
                                 ("set", "/labels", nested_set),
                                 ("pair", "/pair/{id}", pair)):
            config.add_route(name, path)
            config.add_view(view, route_name=name, renderer="json")
        return config.make_wsgi_app()


@pytest.fixture(params=["memory", "redis"])
def served(request, redis_url, redis_prefix):
    gate = Gate()
    wsgi = make_app("memory://" if request.param == "memory" else redis_url, redis_prefix, gate)
    yield TestApp(wsgi), get_policy(wsgi.registry), gate
    gate.go.set()
    get_policy(wsgi.registry).close()


def test_a_date_raises_the_named_error_on_every_call(served):
    app, policy, _ = served
    for call in range(5):
        with pytest.raises(NotJSONValue) as raised:
            app.get("/when/1")
        error = raised.value
        assert isinstance(error, TypeError)
        assert error.key == "when:1" and error.path == "$['at']", call
        message = str(error)
        assert "'when:1'" in message and "datetime.date" in message, message
        assert "stores JSON values only" in message, message
    assert policy.peek("when:1") is None  # never stored
    assert policy.stats.snapshot()["loads"] >= 1


def test_a_set_inside_a_dict_is_refused_the_same_way(served):
    app, _, _ = served
    for _ in range(5):
        with pytest.raises(NotJSONValue) as raised:
            app.get("/labels")
        assert raised.value.key == "labels" and raised.value.path == "$['labels']"
        assert "builtins.set" in str(raised.value)


def test_a_waiter_on_the_same_cold_key_is_told_at_once(served):
    """The holder's value is refused: its lease is released on the failure, so a request
    waiting on the key is not stalled for the lease timeout -- and it raises too."""
    app, policy, gate = served
    outcome: dict = {}

    def request(name: str, path: str) -> None:
        try:
            app.get(path)
            outcome[name] = "answered"
        except NotJSONValue as exc:
            outcome[name] = exc
        outcome[f"{name} done"] = time.monotonic()

    holder = threading.Thread(target=request, args=("holder", "/slow/2"))
    holder.start()
    assert gate.loading.wait(10)
    waits = policy.stats.snapshot()["lock_waits"]
    waiter = threading.Thread(target=request, args=("waiter", "/when/2"))
    waiter.start()
    poll(lambda: policy.stats.snapshot()["lock_waits"] > waits, 10,
         "the second request to wait on the lease")
    released = time.monotonic()
    gate.go.set()
    holder.join(30)
    waiter.join(30)
    assert isinstance(outcome["holder"], NotJSONValue)
    assert isinstance(outcome["waiter"], NotJSONValue) and outcome["waiter"].key == "when:2"
    took = outcome["waiter done"] - released
    assert took < LOCK_TIMEOUT / 5, f"the waiter took {took:.2f}s"


def test_tuples_come_back_as_lists_on_every_path(served):
    app, _, _ = served
    expected = {"outer": "list", "inner": "list", "value": [1, [2, 3]]}
    assert app.get("/pair/1").json == expected  # a miss (stored)
    assert app.get("/pair/1").json == expected  # a hit
    for _ in range(2):  # loaded without the cache (the request's transaction wrote)
        assert app.get("/pair/2?dirty=1").json == expected


@pytest.mark.parametrize("value, path, what", [
    ({"x": float("nan")}, "$['x']", "nan"),
    ([1, {(1, 2): 3}], "$[1][(1, 2)]", "tuple dict key"),
    ({"n": [b"bytes"]}, "$['n'][0]", "builtins.bytes"),
])
def test_other_values_json_cannot_hold_name_their_place(served, value, path, what):
    _, policy, _ = served
    for _ in range(2):
        with pytest.raises(NotJSONValue) as raised:
            policy.get_or_set("odd", lambda: value)
        assert raised.value.path == path and what in str(raised.value)
