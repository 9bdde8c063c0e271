"""Redis topologies behind one URL: one server, Sentinel, Cluster.

Shared by the cache (``examcache.redis_url``) and the mail queue (``mail.queue_url``):
this module parses and checks the URL and builds redis-py clients; it knows nothing
of either user.

* ``redis://[user:password@]host:port/db``, ``rediss://…``, ``unix:///path`` -- one server
  (or a primary); redis-py's own URL syntax.
* ``redis+sentinel://[user:password@]h1:26379,h2:26380/<service>[/<db>][?options]`` --
  the primary of ``<service>``, found through :class:`redis.sentinel.Sentinel` (and found
  again after a failover).  ``user:password`` authenticate to the data nodes; options:
  ``sentinel_password``, ``sentinel_username`` (the sentinels' own ACL, when they have one).
  ``rediss+sentinel://`` speaks TLS to the data nodes and the sentinels (add
  ``sentinel_ssl=false`` for plain-text sentinels); ``ssl_cert_reqs``, ``ssl_ca_certs``,
  ``ssl_certfile``, ``ssl_keyfile`` are passed to redis-py.
* ``redis+cluster://[user:password@]h1:7000,h2:7001/`` -- a Redis Cluster through
  :class:`redis.cluster.RedisCluster` (the listed nodes are only the startup nodes; the
  client learns the slots and follows ``MOVED``/``ASK``).  ``rediss+cluster://`` for TLS,
  with the same ``ssl_*`` options.  A cluster has one database: no ``/db``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
_SSL_OPTIONS = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
_OPTIONS = {"sentinel_password", "sentinel_username", "sentinel_ssl", *_SSL_OPTIONS}


class InvalidURL(ValueError):
    """The URL cannot be used; the message says why (the settings add the setting's name)."""


@dataclass(frozen=True)
class Topology:
    kind: str  #: ``single``, ``sentinel``, ``cluster`` or ``memory`` (embedded, no Redis)
    url: str
    hosts: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None
    ssl: bool = False
    options: dict[str, str] = field(default_factory=dict)

    def connection_kwargs(self) -> dict[str, Any]:
        """Authentication and TLS for the data nodes."""
        kw: dict[str, Any] = {}
        if self.username:
            kw["username"] = self.username
        if self.password:
            kw["password"] = self.password
        if self.ssl:
            kw["ssl"] = True
            kw.update({k: v for k, v in self.options.items() if k in _SSL_OPTIONS})
        return kw


def is_multi_node(url: str) -> bool:
    return url.split("://", 1)[0] in SENTINEL_SCHEMES + CLUSTER_SCHEMES


def parse(url: str) -> Topology:
    """Parse a Redis URL of any topology; :class:`InvalidURL` when malformed."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise InvalidURL("must be a URL with a scheme")
    if scheme == "memory":
        return Topology("memory", url)
    if scheme not in SENTINEL_SCHEMES + CLUSTER_SCHEMES:
        return Topology("single", url)
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    username = password = None
    if "@" in netloc:
        auth, _, netloc = netloc.rpartition("@")
        user, colon, pw = auth.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if colon else None
    hosts = []
    for item in netloc.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidURL(f"{item.strip() or '(empty)'!r} is not host:port; list the nodes as "
                             f"host:port separated by commas, e.g. {scheme}://10.0.0.1:"
                             f"{26379 if 'sentinel' in scheme else 7000},10.0.0.2:"
                             f"{26379 if 'sentinel' in scheme else 7001}/")
        hosts.append((host.strip("[]"), int(port)))
    options: dict[str, str] = {}
    for name, values in parse_qs(query, keep_blank_values=True).items():
        if name not in _OPTIONS:
            raise InvalidURL(f"unknown option {name!r}; allowed: {', '.join(sorted(_OPTIONS))}")
        options[name] = values[-1]
    segments = [s for s in path.split("/") if s]
    ssl = scheme.startswith("rediss")
    if scheme in CLUSTER_SCHEMES:
        if segments:
            raise InvalidURL("a Redis Cluster has one database: nothing may follow the node "
                             f"list, e.g. {scheme}://10.0.0.1:7000,10.0.0.2:7001/")
        return Topology("cluster", url, tuple(hosts), username=username, password=password,
                        ssl=ssl, options=options)
    if not segments or len(segments) > 2:
        raise InvalidURL(f"needs the service name and optionally the database: "
                         f"{scheme}://h1:26379,h2:26379/<service>/<db>")
    db = 0
    if len(segments) == 2:
        if not segments[1].isdigit():
            raise InvalidURL("the database after the service name must be a number")
        db = int(segments[1])
    return Topology("sentinel", url, tuple(hosts), service=unquote(segments[0]), db=db,
                    username=username, password=password, ssl=ssl, options=options)


def sentinel_manager(topo: Topology, socket_timeout: float):
    """A :class:`redis.sentinel.Sentinel` for ``topo`` (short timeouts, no retries)."""
    from redis.sentinel import Sentinel

    sentinel_kwargs: dict[str, Any] = {"socket_timeout": socket_timeout,
                                       "socket_connect_timeout": socket_timeout}
    if topo.options.get("sentinel_password"):
        sentinel_kwargs["password"] = topo.options["sentinel_password"]
    if topo.options.get("sentinel_username"):
        sentinel_kwargs["username"] = topo.options["sentinel_username"]
    if topo.ssl and topo.options.get("sentinel_ssl", "true").lower() not in ("false", "0", "no"):
        sentinel_kwargs["ssl"] = True
        sentinel_kwargs.update({k: v for k, v in topo.options.items() if k in _SSL_OPTIONS})
    return Sentinel(list(topo.hosts), sentinel_kwargs=sentinel_kwargs)


def primary_pool(topo: Topology, **connection_kwargs):
    """A :class:`redis.sentinel.SentinelConnectionPool` on the service's primary:
    every new connection asks the sentinels where the primary is now."""
    from redis.sentinel import SentinelConnectionPool

    timeout = connection_kwargs.get("socket_connect_timeout") or connection_kwargs.get(
        "socket_timeout") or 1.0
    manager = sentinel_manager(topo, timeout)
    return SentinelConnectionPool(topo.service, manager, db=topo.db,
                                  **topo.connection_kwargs(), **connection_kwargs)


def cluster_client(topo: Topology, **kwargs):
    """A :class:`redis.cluster.RedisCluster` on ``topo``'s startup nodes."""
    from redis.cluster import ClusterNode, RedisCluster

    return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in topo.hosts],
                        **topo.connection_kwargs(), **kwargs)


def client_for(url: str, **kwargs):
    """A general redis-py client for any topology (tools, tests; not the hot path)."""
    import redis

    topo = parse(url)
    if topo.kind == "cluster":
        return cluster_client(topo, **kwargs)
    if topo.kind == "sentinel":
        return redis.Redis(connection_pool=primary_pool(topo, **kwargs))
    return redis.Redis.from_url(url, **kwargs)
