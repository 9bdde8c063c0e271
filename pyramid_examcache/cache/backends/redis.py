"""``redis://`` / ``rediss://`` / ``unix://``: the Redis backend.

Layout under the key prefix ``P``:

* ``P v:<key>`` -- a hash ``{d: value bytes, t: tags, g: tag versions}`` with the TTL;
* ``P l:<key>`` -- the lease: the holder's random token (``""`` = "bypass"), PX lease_ttl;
* ``P t:<tag>`` -- the tag's current version, a random string, with a TTL at
  least as long as any value stored under it.

Each operation of :class:`~.base.Backend` is one Lua script (one round trip,
atomic).  ``lookup`` is the script and an ``HGET`` of the value inside one
``MULTI``/``EXEC`` (still one round trip, still atomic): the script decides
(valid hit, lease, wait, bypass) without reading the value, and the ``HGET``
returns the bytes natively -- copying a large value into Lua and back costs
Redis about 100 us per 50 kB, on every hit.  Every key a script touches lives
under one prefix on one Redis; this backend is for a single Redis (or a
primary), not Redis Cluster.

Connections come from one pool per application with short socket/connect
timeouts and **no** client-side retries: a slow Redis must cost one timeout,
not three (the policy's circuit breaker handles the rest).
"""
from __future__ import annotations

import uuid
from typing import Iterable, Sequence

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .base import BYPASS_MS, SEP, Backend, Lookup, Status

_SPLIT = r"""
local function split(s)
  local out = {}
  if s == nil or s == false or s == '' then return out end
  for part in string.gmatch(s, '([^\31]+)') do out[#out + 1] = part end
  return out
end
"""

# KEYS: value, lease. ARGV: token, lease_ms, tag_prefix, ttl, version_seed, tags...
# A valid hit answers {1} without touching the value: the HGET queued after
# this script in the same MULTI/EXEC returns it (see RedisBackend.lookup).
LOOKUP = _SPLIT + r"""
if redis.call('HEXISTS', KEYS[1], 'd') == 1 then
  local r = redis.call('HMGET', KEYS[1], 't', 'g')
  local ok = true
  if r[1] and r[1] ~= '' then
    local tags, vers = split(r[1]), split(r[2])
    for i = 1, #tags do
      if redis.call('GET', ARGV[3] .. tags[i]) ~= vers[i] then ok = false; break end
    end
  end
  if ok then return {1, false} end
  redis.call('DEL', KEYS[1])
end
local holder = redis.call('GET', KEYS[2])
if holder then
  if holder == '' then return {4, false} end
  return {3, false}
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
local versions = {}
for i = 6, #ARGV do
  local tk = ARGV[3] .. ARGV[i]
  local v = redis.call('GET', tk)
  if not v then
    v = ARGV[5] .. '.' .. i
    redis.call('SET', tk, v, 'EX', ARGV[4])
  end
  versions[#versions + 1] = v
end
return {2, table.concat(versions, '\31')}
"""

# KEYS: value, lease. ARGV: token, value, ttl, tag_prefix, tags, versions
FILL = _SPLIT + r"""
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
local ttl = tonumber(ARGV[3])
local tags, vers = split(ARGV[5]), split(ARGV[6])
for i = 1, #tags do
  local tk = ARGV[4] .. tags[i]
  if redis.call('GET', tk) ~= vers[i] then return 0 end
end
for i = 1, #tags do
  local tk = ARGV[4] .. tags[i]
  if redis.call('TTL', tk) < ttl then redis.call('EXPIRE', tk, ttl) end
end
redis.call('HSET', KEYS[1], 'd', ARGV[2], 't', ARGV[5], 'g', ARGV[6])
redis.call('EXPIRE', KEYS[1], ttl)
return 1
"""

# KEYS: lease. ARGV: token, bypass_ms
RELEASE = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], '', 'PX', ARGV[2])
  return 1
end
return 0
"""

# KEYS: value. ARGV: tag_prefix
GET = _SPLIT + r"""
local r = redis.call('HMGET', KEYS[1], 'd', 't', 'g')
if not r[1] then return false end
local tags, vers = split(r[2]), split(r[3])
for i = 1, #tags do
  if redis.call('GET', ARGV[1] .. tags[i]) ~= vers[i] then return false end
end
return r[1]
"""


def make_client(url: str, socket_timeout: float, max_connections: int = 64) -> redis.Redis:
    """A client on its own pool: short timeouts, no retries, health checks."""
    pool = redis.ConnectionPool.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout,
        retry=Retry(NoBackoff(), 0),
        max_connections=max_connections,
        health_check_interval=30,
    )
    return redis.Redis(connection_pool=pool)


def _get_connection(pool):
    try:
        return pool.get_connection()
    except TypeError:  # redis-py < 5.3 requires a command name
        return pool.get_connection("MULTI")


class RedisBackend(Backend):
    errors = (redis.RedisError, OSError)

    def __init__(self, url: str, prefix: str = "examcache:", socket_timeout: float = 0.25,
                 client: redis.Redis | None = None) -> None:
        self.client = client or make_client(url, socket_timeout)
        self.prefix = prefix
        self._tag_prefix = f"{prefix}t:"
        self._lookup = self.client.register_script(LOOKUP)
        self._fill = self.client.register_script(FILL)
        self._release = self.client.register_script(RELEASE)
        self._get = self.client.register_script(GET)

    def _v(self, key: str) -> str:
        return f"{self.prefix}v:{key}"

    def _l(self, key: str) -> str:
        return f"{self.prefix}l:{key}"

    def lookup(self, key, token, lease_ttl, ttl, tags=()):
        value_key = self._v(key)
        args = (token, max(1, int(lease_ttl * 1000)), self._tag_prefix, int(ttl),
                uuid.uuid4().hex, *tags)
        for attempt in range(2):
            try:
                reply, value = self._transaction(
                    ("EVALSHA", self._lookup.sha, 2, value_key, self._l(key), *args),
                    ("HGET", value_key, "d"))
                if isinstance(reply, Exception):
                    raise reply
                break
            except redis.exceptions.NoScriptError:  # Redis restarted or SCRIPT FLUSH
                if attempt:
                    raise
                self.client.script_load(LOOKUP)
        status, payload = reply
        if status == 1:
            return Lookup(Status.HIT, value)
        if status == 2:
            versions = tuple(payload.decode().split(SEP)) if payload else ()
            return Lookup(Status.LEASED, None, versions)
        return Lookup(Status(status))

    def fill(self, key, token, value, ttl, tags=(), versions=()):
        return bool(self._fill(
            keys=[self._v(key), self._l(key)],
            args=[token, value, int(ttl), self._tag_prefix, SEP.join(tags), SEP.join(versions)],
        ))

    def release(self, key, token):
        self._release(keys=[self._l(key)], args=[token, BYPASS_MS])

    def invalidate(self, keys=(), tags=()):
        names = [name for key in keys for name in (self._v(key), self._l(key))]
        names += [self._tag_prefix + tag for tag in tags]
        if names:
            self.client.delete(*names)

    def get(self, key):
        return self._get(keys=[self._v(key)], args=[self._tag_prefix])

    def _transaction(self, *commands):
        """``MULTI``, ``commands``, ``EXEC`` in one write and one round trip; returns
        ``EXEC``'s list (an error inside it is an exception instance, not raised).

        Done on a pooled connection directly: a redis-py ``Pipeline`` costs
        about as much client CPU as the whole lookup."""
        pool = self.client.connection_pool
        conn = _get_connection(pool)
        try:
            conn.send_packed_command(conn.pack_commands(
                [("MULTI",), *commands, ("EXEC",)]))
            for _ in range(len(commands) + 1):  # +OK, +QUEUED...
                conn.read_response()
            result = conn.read_response()
        except BaseException:
            conn.disconnect()  # replies may be left unread: never reuse it
            raise
        finally:
            pool.release(conn)
        return result

    def clear(self):
        batch = []
        for name in self.client.scan_iter(match=self.prefix + "*", count=1000):
            batch.append(name)
            if len(batch) >= 500:
                self.client.delete(*batch)
                batch.clear()
        if batch:
            self.client.delete(*batch)

    def ping(self):
        self.client.ping()

    def close(self):
        self.client.close()
        self.client.connection_pool.disconnect()
