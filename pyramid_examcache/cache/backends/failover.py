"""Failover detection for a Sentinel-managed primary: the cache's *epoch*.

Redis replicates asynchronously: the primary acknowledges a ``DEL`` before any
replica has it.  If the primary dies (or is failed over) right then, the
promoted replica still holds the value -- an acknowledged invalidation is lost
and an invalidated value comes back.  No client-side retry can repair that: the
client does not know which of its acknowledged writes the new primary lacks.

What we do: every key the cache writes on a Sentinel topology carries an
**epoch**, the primary's replication ID (``master_replid``, 16 hex digits), read
by ``INFO replication`` each time a connection is (re)established::

    <prefix><epoch>:v:<key>   <prefix><epoch>:l:<key>   <prefix><epoch>:t:<tag>

Redis gives a primary a fresh random replication ID when it starts and when a
replica is promoted (the old one survives only as ``master_replid2``, for partial
resyncs); a replica reports its primary's ID.  So:

1. *Every key of epoch E was written on the one node that generated E, during
   its current mastership.*  A connection only adopts E after reading it from a
   node that says ``role:master``; every batch of commands ends with ``ROLE``
   and its replies are used only if that node still answers ``master``
   (:func:`check_role`; a write on a demoted node fails anyway with
   ``READONLY``).  A promoted replica has a new ID, never E.
2. *So within one epoch nothing acknowledged is lost*: all of E's reads and
   writes went to the node that holds E's whole history, and the single-Redis
   proof of G2 (``policy.py``) applies unchanged.
3. *After a failover nothing that predates it is served*: clients reconnect
   (their connection to the old primary breaks, or ``ROLE`` says ``slave``),
   read the new primary's ID E' and use E' keys only.  Every E' value was filled
   on the new primary after its promotion, under a lease granted there after the
   promotion, so its load started after the promotion -- after every write
   whose invalidation went to the old primary had committed.  The old epoch's
   keys, including a value whose ``DEL`` was lost, are unreachable and expire
   with their TTL (memory: at most one TTL's worth of dead keys per failover).

The price is one cold cache per failover (every key misses once, under G3's
single load per key) and a ``ROLE`` per batch (a few bytes; see bench/RESULTS.md).

Residual window (split brain): a *writer* still connected to the old primary
after the sentinels promoted another and before the old one is demoted sends
its ``DEL`` to the old epoch, where readers of the new one do not look.  Redis's
own remedy bounds it: ``min-replicas-to-write 1`` and ``min-replicas-max-lag``
on the primary make the isolated old primary refuse the ``DEL``; a refused
invalidation is deferred and kept in the durable log (G4, G6), which re-applies
it to the new primary within G6's bound.  :class:`SwitchWatch` narrows the
window further: it listens for the sentinels' ``+switch-master`` and drops every
connection at once.
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
    info = conn.read_response()
    if isinstance(info, bytes):
        info = info.decode()
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    if fields.get("role") != "master" or not fields.get("master_replid"):
        raise NotPrimary(f"{conn.host}:{conn.port} is not a primary ({fields.get('role')})")
    return fields["master_replid"][:16]


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
