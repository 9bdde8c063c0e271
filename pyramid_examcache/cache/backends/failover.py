"""Failover detection for a Sentinel-managed primary: the cache's *epoch*.

Redis replicates asynchronously: the primary acknowledges a ``DEL`` before any
replica has it, so a failover right then can lose an acknowledged invalidation
and bring an invalidated value back.  No client-side retry can repair that.

What we do: every key the cache writes on a Sentinel topology carries an
**epoch**, the primary's replication ID (``master_replid``, 16 hex digits), read
by ``INFO replication`` each time a connection is (re)established::

    <prefix><epoch>:v:<key>   <prefix><epoch>:l:<key>   <prefix><epoch>:t:<tag>

and every batch of commands ends with ``ROLE`` (:func:`check_role`): its replies
count only if the node still answers ``master``.  After a failover nothing that
predates it is served; the price is one cold cache per failover.
:class:`SwitchWatch` listens for the sentinels' ``+switch-master`` and makes every
connection reconnect at once.  Used by :class:`~.sentinel.SentinelBackend`.

The proof (why every key of an epoch was written on one node during one
mastership, why nothing acknowledged is lost within an epoch) and the residual
split-brain window with its remedy (``min-replicas-to-write``, the durable log):
``docs/design/topologies.md``.
"""
from __future__ import annotations

import logging
import threading

import redis

log = logging.getLogger(__name__)

#: ``ROLE`` in RESP, appended to every batch on a Sentinel topology
ROLE = b"*1\r\n$4\r\nROLE\r\n"


class NotPrimary(redis.ConnectionError):
    """The node no longer is (or never was) the primary: reconnect through the sentinels."""


def primary_epoch(conn) -> str:
    """Connect ``conn`` if need be; the primary's replication ID (the epoch).
    Raises :class:`NotPrimary` when the node is not a primary."""
    conn.connect()  # a SentinelManagedConnection asks the sentinels where the primary is
    conn.send_command("INFO", "replication")
    return replication_epoch(conn, conn.read_response())


def replication_epoch(conn, info) -> str:
    """The epoch in ``info`` (the reply to ``INFO replication`` on ``conn``)."""
    epoch = mastership(info)
    if epoch is None:
        role = _field(info.encode() if isinstance(info, str) else info, b"role:")
        raise NotPrimary(f"{conn.host}:{conn.port} is not a primary "
                         f"({role.decode() if role is not None else None})")
    return epoch


def mastership(info: bytes | str) -> str | None:
    """The epoch in ``info`` (an ``INFO replication`` reply): the first 16 characters of
    ``master_replid``; None for a node that is not a primary.  Read without splitting the
    reply into fields: the barrier's probe reads it once per primary and round."""
    if isinstance(info, str):
        info = info.encode()
    replid = _field(info, b"master_replid:")
    if _field(info, b"role:") != b"master" or not replid:
        return None
    return replid[:16].decode()


def _field(info: bytes, name: bytes) -> bytes | None:
    """The value of the field ``name`` (``b"role:"``) of an ``INFO`` reply, or None."""
    at = info.find(b"\n" + name)  # (every field follows a line: "# Replication" first)
    if at < 0:
        return None
    start = at + 1 + len(name)
    end = info.find(b"\r", start)
    return info[start:] if end < 0 else info[start:end]


def check_role(reply) -> None:
    """Raise :class:`NotPrimary` unless ``reply`` (to ``ROLE``) says master."""
    role = reply[0] if isinstance(reply, (list, tuple)) and reply else reply
    if role not in (b"master", "master"):
        raise NotPrimary(f"the node was demoted ({role!r}); reconnecting to the new primary")


class SwitchWatch:
    """A daemon thread subscribed to ``+switch-master`` on the sentinels; calls
    ``on_switch()`` for each failover of ``service`` (best effort: the epoch
    check above does not depend on it)."""

    def __init__(self, sentinel, service: str, on_switch) -> None:
        self._sentinel = sentinel
        self._service = service
        self._on_switch = on_switch
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="examcache-switch-watch",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for client in list(self._sentinel.sentinels):
                if self._stop.is_set():
                    return
                try:
                    pubsub = client.pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe("+switch-master")
                    while not self._stop.is_set():
                        message = pubsub.get_message(timeout=0.5)
                        if message and str(message.get("data", b""), "utf-8", "replace"
                                           ).split(" ", 1)[0] == self._service:
                            log.warning("sentinel reports a failover of %s: %s",
                                        self._service, message["data"])
                            self._on_switch()
                except (redis.RedisError, OSError):
                    self._stop.wait(0.5)
                    continue
                finally:
                    try:
                        pubsub.close()
                    except Exception:  # noqa: BLE001 -- best effort
                        pass

    def close(self) -> None:
        self._stop.set()
