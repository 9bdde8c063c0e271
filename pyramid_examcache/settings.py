"""Parse and validate the ``examcache.*`` and ``mail.*`` settings.

Every setting is converted explicitly (no guessing of types from strings); a bad
value raises :class:`pyramid.exceptions.ConfigurationError` naming the setting
and saying what is allowed.

Names are checked too, against one table (:data:`CACHE_SETTINGS`,
:data:`MAIL_SETTINGS`): an unknown ``examcache.*`` name is a ConfigurationError
suggesting the closest valid one; an unknown ``mail.*`` name (a prefix shared with
pyramid_mailer, whose own names are accepted silently) is logged once per process
as a WARNING of the ``pyramid_examcache.settings`` logger with the same suggestion.
"""
from __future__ import annotations

import difflib
import logging
import os
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import urlsplit

from pyramid.exceptions import ConfigurationError
from pyramid.settings import asbool

CACHE_SCHEMES = ("redis", "rediss", "unix", "memory", "redis+sentinel", "rediss+sentinel",
                 "redis+cluster", "rediss+cluster")
QUEUE_SCHEMES = ("redis", "rediss", "unix", "sqlite", "memory", "redis+sentinel",
                 "rediss+sentinel")
#: why the mail queue refuses a cluster URL
QUEUE_NO_CLUSTER = ("Huey's Redis storage is a plain redis-py client whose queue, schedule and "
                    "result keys are separate keys used together (multi-key commands and a "
                    "Lua script across them), which Redis Cluster refuses (CROSSSLOT); use "
                    "redis+sentinel:// (or redis:// to one node) for mail.queue_url")
MAIL_TRANSPORTS = ("smtp", "file", "memory")

log = logging.getLogger(__name__)

#: Every ``examcache.*`` setting the package reads, anywhere (the README's settings table):
#: any other ``examcache.*`` name is refused at start-up (:func:`check_cache_names`).
CACHE_SETTINGS: frozenset[str] = frozenset(f"examcache.{name}" for name in (
    # the backend and the policy (parse_cache_settings)
    "redis_url", "key_prefix", "default_ttl", "socket_timeout", "lock_timeout", "wait_timeout",
    "breaker_threshold", "breaker_reset", "near_cache_mb", "tracking", "tracking_lease_ms",
    "early_hits", "enabled", "max_value_bytes", "require_registration",
    # the durable invalidation log (G6)
    "invalidation_log", "invalidation_log_url", "relay_interval", "relay_after",
    # pyramid_examcache.admin and pyramid_examcache.metrics
    "admin_path", "admin_permission", "admin_login_url", "metrics_path",
))
#: Every ``mail.*`` setting the package reads (parse_mail_settings).
MAIL_SETTINGS: frozenset[str] = frozenset(f"mail.{name}" for name in (
    "host", "port", "username", "password", "tls", "ssl", "timeout", "default_sender",
    "transport", "file_dir", "queue_url", "queue_name", "retries", "retry_delay",
    "retry_backoff", "max_retry_delay", "max_age", "smtputf8", "allow_plaintext_auth",
    "keep_completed", "keep_failed", "workers", "relay_interval", "session_attr",
    "request_attr", "max_message_bytes", "outbox_url", "lease", "requeue_after",
    "queue_timeout", "shutdown_timeout",
))
#: pyramid_mailer's own ``mail.*`` names (``Mailer.from_settings``, ``DebugMailer``): an app
#: may configure both packages from one .ini, so these are never warned about.
PYRAMID_MAILER_SETTINGS: frozenset[str] = frozenset(f"mail.{name}" for name in (
    "host", "port", "username", "password", "tls", "ssl", "keyfile", "certfile", "queue_path",
    "debug", "default_sender", "sendmail_app", "sendmail_template", "top_level_directory",
))
_warned_mail_names: set[str] = set()


def cache_setting(name: str) -> str:
    """``name`` itself, once checked to be in :data:`CACHE_SETTINGS` (``LookupError``
    otherwise): how the package's parts name the settings they read."""
    if name not in CACHE_SETTINGS:
        raise LookupError(f"{name} is not in pyramid_examcache.settings.CACHE_SETTINGS")
    return name


def _unknown(settings: Mapping[str, Any], prefix: str,
             valid: frozenset[str]) -> list[tuple[str, str]]:
    """``(name, "Unknown setting name; did you mean Y?")`` for each name under ``prefix``
    that is not in ``valid``."""
    messages = []
    shorts = sorted(name[len(prefix):] for name in valid)
    for name in sorted(k for k in settings if isinstance(k, str) and k.startswith(prefix)):
        if name in valid:
            continue
        close = difflib.get_close_matches(name[len(prefix):], shorts, n=1)
        hint = (f"did you mean {prefix}{close[0]}?" if close
                else f"the {prefix}* settings are {', '.join(prefix + s for s in shorts)}")
        messages.append((name, f"Unknown setting {name}; {hint}"))
    return messages


def check_cache_names(settings: Mapping[str, Any]) -> None:
    """Refuse any ``examcache.*`` name that is not in :data:`CACHE_SETTINGS`
    (ConfigurationError naming it and the closest valid name)."""
    messages = _unknown(settings, "examcache.", CACHE_SETTINGS)
    if messages:
        raise ConfigurationError("\n".join(message for _, message in messages))


def check_mail_names(settings: Mapping[str, Any]) -> None:
    """Log a WARNING (once per name per process) for each ``mail.*`` name that neither
    this package nor pyramid_mailer reads, with the closest valid name."""
    for name, message in _unknown(settings, "mail.", MAIL_SETTINGS | PYRAMID_MAILER_SETTINGS):
        if name not in _warned_mail_names:
            _warned_mail_names.add(name)
            log.warning("%s (ignored: neither pyramid_examcache nor pyramid_mailer reads it)",
                        message)


def _error(name: str, value: Any, allowed: str) -> ConfigurationError:
    return ConfigurationError(f"Invalid setting {name} = {value!r}: {allowed}")


def as_number(settings: Mapping[str, Any], name: str, default: float, *,
              minimum: float = 0.0, integer: bool = False, allow_zero: bool = True):
    """Read ``name`` as a number >= ``minimum`` (an int when ``integer``)."""
    raw = settings.get(name, default)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        raw = default
    try:
        value = int(str(raw).strip()) if integer else float(str(raw).strip())
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise _error(name, raw, f"must be {kind}") from None
    if value < minimum or (not allow_zero and value == 0):
        bound = f"> {minimum}" if not allow_zero and minimum == 0 else f">= {minimum}"
        raise _error(name, raw, f"must be {bound}")
    return value


def as_bool(settings: Mapping[str, Any], name: str, default: bool) -> bool:
    raw = settings.get(name, default)
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text not in ("true", "false", "yes", "no", "on", "off", "1", "0", "y", "n", "t", "f"):
        raise _error(name, raw, "must be a boolean (true/false)")
    return asbool(text)


def as_url(settings: Mapping[str, Any], name: str, default: str, schemes: tuple[str, ...]) -> str:
    raw = settings.get(name, default)
    url = str(raw or default).strip()
    if "://" not in url:
        raise _error(name, raw, f"must be a URL with a scheme, one of {', '.join(schemes)}")
    from .topology import CLUSTER_SCHEMES, InvalidURL, is_multi_node, parse

    scheme = url.split("://", 1)[0]
    if scheme in CLUSTER_SCHEMES and schemes is QUEUE_SCHEMES:
        raise _error(name, raw, QUEUE_NO_CLUSTER)
    if is_multi_node(url) and scheme in schemes:
        try:
            parse(url)
        except InvalidURL as exc:
            raise _error(name, raw, str(exc)) from None
        return url
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError on a bad port
    except ValueError as exc:
        raise _error(name, raw, f"is not a valid URL ({exc})") from None
    if parts.scheme not in schemes:
        raise _error(name, raw, f"unknown scheme {parts.scheme!r}; allowed: {', '.join(schemes)}")
    if parts.scheme in ("redis", "rediss") and not parts.hostname:
        raise _error(name, raw, "a redis URL needs a host, e.g. redis://127.0.0.1:6379/0")
    if parts.scheme in ("redis", "rediss"):
        db = parts.path.strip("/")
        if db and not db.isdigit():
            raise _error(name, raw, "the database in a redis URL must be a number (redis://host:port/0)")
    if parts.scheme == "unix" and not parts.path:
        raise _error(name, raw, "a unix URL needs a socket path, e.g. unix:///run/redis.sock")
    if parts.scheme == "sqlite" and not url[len("sqlite://"):].strip("/"):
        raise _error(name, raw, "a sqlite URL needs a file path, e.g. sqlite:///var/huey.sqlite")
    return url


@dataclass(frozen=True)
class CacheSettings:
    redis_url: str = "memory://"
    key_prefix: str = "examcache:"
    default_ttl: int = 3600
    socket_timeout: float = 0.25
    lock_timeout: float = 5.0
    wait_timeout: float = 5.0
    breaker_threshold: int = 3
    breaker_reset: float = 2.0
    near_cache_mb: float = 32.0
    #: keep the near cache exact with Redis CLIENT TRACKING + a shared barrier (issue 11)
    tracking: bool = True
    #: serve cached-view hits from a tween before pyramid_tm and the router (cache/early.py)
    early_hits: bool = True
    #: read leases on top of tracking (:mod:`.cache.backends.read_lease`): held values are
    #: served with no barrier; writes wait for readers to catch up (0 = off)
    tracking_lease_ms: int = 1000
    enabled: bool = True
    invalidation_log: bool = True
    invalidation_log_url: str | None = None
    relay_interval: float = 1.0
    relay_after: float = 2.0
    #: values (get_or_set JSON, cached view entities) larger than this are not stored
    max_value_bytes: int = 1048576
    #: a session never passed to ``register()`` that writes a ``__cache_keys__`` model
    #: raises :class:`~.cache.orm.UnregisteredSession` instead of a warning (issue 18)
    require_registration: bool = False


def _lease_ms(settings: Mapping[str, Any], name: str) -> int:
    value = as_number(settings, name, CacheSettings.tracking_lease_ms, integer=True)
    if value and not 200 <= value <= 60000:
        raise _error(name, value, "must be 0 (off) or between 200 and 60000 (milliseconds)")
    return value


def parse_cache_settings(settings: Mapping[str, Any]) -> CacheSettings:
    """Validate the ``examcache.*`` settings (names and values) and return them typed."""
    check_cache_names(settings)
    p = "examcache."
    prefix = str(settings.get(p + "key_prefix", CacheSettings.key_prefix))
    if not prefix or any(c.isspace() for c in prefix):
        raise _error(p + "key_prefix", prefix, "must be a non-empty string without whitespace")
    lock_timeout = as_number(settings, p + "lock_timeout", CacheSettings.lock_timeout, allow_zero=False)
    redis_url = as_url(settings, p + "redis_url", CacheSettings.redis_url, CACHE_SCHEMES)
    if "+cluster://" in redis_url and ("{" in prefix or "}" in prefix):
        raise _error(p + "key_prefix", prefix, "must not contain { or } with a redis+cluster:// "
                     "URL (the cache puts each key's hash tag in braces)")
    return CacheSettings(
        redis_url=redis_url,
        key_prefix=prefix,
        default_ttl=as_number(settings, p + "default_ttl", CacheSettings.default_ttl,
                              integer=True, allow_zero=False),
        socket_timeout=as_number(settings, p + "socket_timeout", CacheSettings.socket_timeout,
                                 allow_zero=False),
        lock_timeout=lock_timeout,
        wait_timeout=as_number(settings, p + "wait_timeout", lock_timeout, allow_zero=False),
        breaker_threshold=as_number(settings, p + "breaker_threshold", CacheSettings.breaker_threshold,
                                    integer=True, minimum=1),
        breaker_reset=as_number(settings, p + "breaker_reset", CacheSettings.breaker_reset,
                                allow_zero=False),
        near_cache_mb=as_number(settings, p + "near_cache_mb", CacheSettings.near_cache_mb),
        tracking=as_bool(settings, p + "tracking", CacheSettings.tracking),
        early_hits=as_bool(settings, p + "early_hits", CacheSettings.early_hits),
        tracking_lease_ms=_lease_ms(settings, p + "tracking_lease_ms"),
        enabled=as_bool(settings, p + "enabled", True),
        invalidation_log=as_bool(settings, p + "invalidation_log", True),
        invalidation_log_url=_database_url(settings, (p + "invalidation_log_url", "sqlalchemy.url")),
        relay_interval=as_number(settings, p + "relay_interval", CacheSettings.relay_interval,
                                 allow_zero=False),
        relay_after=as_number(settings, p + "relay_after", CacheSettings.relay_after),
        max_value_bytes=as_number(settings, p + "max_value_bytes", CacheSettings.max_value_bytes,
                                  integer=True, allow_zero=False),
        require_registration=as_bool(settings, p + "require_registration", False),
    )


@dataclass(frozen=True)
class MailSettings:
    host: str = "localhost"
    port: int = 25
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ssl: bool = False
    timeout: float = 10.0
    default_sender: str = "no-reply@localhost"
    transport: str = "file"
    file_dir: str = "var/mail"
    queue_url: str = "sqlite:///var/huey.sqlite"
    queue_name: str = "examcache-mail"
    retries: int = 3
    retry_delay: float = 2.0
    retry_backoff: float = 2.0
    max_retry_delay: float = 600.0
    max_age: float = 86400.0
    smtputf8: bool = False
    allow_plaintext_auth: bool = False
    keep_completed: int = 3600
    keep_failed: int = 604800
    workers: int = 2
    relay_interval: int = 60
    session_attr: str = "dbsession"
    request_attr: str = "mailer"
    max_message_bytes: int = 10 * 1024 * 1024
    outbox_url: str | None = None
    lease: float = 120.0
    requeue_after: int = 900
    queue_timeout: float = 2.0
    shutdown_timeout: float = 30.0


def parse_mail_settings(settings: Mapping[str, Any]) -> MailSettings:
    """Validate the ``mail.*`` settings and return them typed (unknown names: a warning)."""
    check_mail_names(settings)
    p = "mail."
    transport = str(settings.get(p + "transport", MailSettings.transport)).strip()
    if transport not in MAIL_TRANSPORTS:
        raise _error(p + "transport", transport, f"must be one of {', '.join(MAIL_TRANSPORTS)}")
    tls = as_bool(settings, p + "tls", False)
    ssl = as_bool(settings, p + "ssl", False)
    if tls and ssl:
        raise _error(p + "tls", "true", "mail.tls (STARTTLS) and mail.ssl cannot both be true")
    port_default = 465 if ssl else (587 if tls else MailSettings.port)
    port = as_number(settings, p + "port", port_default, integer=True, minimum=1)
    if port > 65535:
        raise _error(p + "port", port, "must be between 1 and 65535")
    file_dir = str(settings.get(p + "file_dir", MailSettings.file_dir))
    here = settings.get("here")
    if here and not os.path.isabs(file_dir):
        file_dir = os.path.join(here, file_dir)
    queue_url = as_url(settings, p + "queue_url", MailSettings.queue_url, QUEUE_SCHEMES)
    if queue_url.startswith("sqlite:///") and here:
        path = queue_url[len("sqlite:///"):]
        if not os.path.isabs(path):
            queue_url = "sqlite:///" + os.path.join(here, path)
    session_attr = str(settings.get(p + "session_attr", MailSettings.session_attr)).strip()
    default_sender = str(settings.get(p + "default_sender", MailSettings.default_sender)).strip()
    if "@" not in default_sender or any(c in default_sender for c in "\r\n"):
        raise _error(p + "default_sender", default_sender,
                     "must be a mail address, e.g. no-reply@example.com or 'Name <a@b.c>'")
    if not session_attr.isidentifier():
        raise _error(p + "session_attr", session_attr, "must be a request attribute name")
    request_attr = str(settings.get(p + "request_attr", MailSettings.request_attr)).strip()
    if not request_attr.isidentifier() or request_attr.startswith("_"):
        raise _error(p + "request_attr", request_attr,
                     "must be a request attribute name, e.g. mailer or outbox_mailer")
    from .mail.message import InvalidAddress, validate_address

    try:
        validate_address(default_sender, p + "default_sender",
                         smtputf8=as_bool(settings, p + "smtputf8", False))
    except InvalidAddress as exc:
        raise _error(p + "default_sender", default_sender, str(exc)) from None
    username = settings.get(p + "username") or None
    allow_plaintext_auth = as_bool(settings, p + "allow_plaintext_auth", False)
    if transport == "smtp" and username and not (tls or ssl) and not allow_plaintext_auth:
        raise _error(p + "username", username,
                     "SMTP AUTH would send the password in clear text: set mail.tls = true "
                     "(STARTTLS) or mail.ssl = true, or mail.allow_plaintext_auth = true to "
                     "allow it anyway")
    retry_delay = as_number(settings, p + "retry_delay", MailSettings.retry_delay)
    max_retry_delay = as_number(settings, p + "max_retry_delay", MailSettings.max_retry_delay,
                                allow_zero=False)
    if max_retry_delay < retry_delay:
        raise _error(p + "max_retry_delay", max_retry_delay,
                     f"must be >= mail.retry_delay ({retry_delay:g})")
    return MailSettings(
        host=str(settings.get(p + "host", MailSettings.host)).strip(),
        port=port,
        username=username,
        password=settings.get(p + "password") or None,
        tls=tls,
        ssl=ssl,
        timeout=as_number(settings, p + "timeout", MailSettings.timeout, allow_zero=False),
        default_sender=default_sender,
        transport=transport,
        file_dir=file_dir,
        queue_url=queue_url,
        queue_name=str(settings.get(p + "queue_name", MailSettings.queue_name)).strip(),
        retries=as_number(settings, p + "retries", MailSettings.retries, integer=True),
        retry_delay=retry_delay,
        retry_backoff=as_number(settings, p + "retry_backoff", MailSettings.retry_backoff, minimum=1),
        max_retry_delay=max_retry_delay,
        max_age=as_number(settings, p + "max_age", MailSettings.max_age, allow_zero=False),
        smtputf8=as_bool(settings, p + "smtputf8", False),
        allow_plaintext_auth=allow_plaintext_auth,
        keep_completed=as_number(settings, p + "keep_completed", MailSettings.keep_completed,
                                 integer=True),
        keep_failed=as_number(settings, p + "keep_failed", MailSettings.keep_failed, integer=True),
        workers=as_number(settings, p + "workers", MailSettings.workers, integer=True, minimum=1),
        relay_interval=as_number(settings, p + "relay_interval", MailSettings.relay_interval,
                                 integer=True, minimum=1),
        session_attr=session_attr,
        request_attr=request_attr,
        max_message_bytes=as_number(settings, p + "max_message_bytes",
                                    MailSettings.max_message_bytes, integer=True,
                                    allow_zero=False),
        outbox_url=_outbox_url(settings),
        lease=as_number(settings, p + "lease", MailSettings.lease, allow_zero=False),
        requeue_after=as_number(settings, p + "requeue_after", MailSettings.requeue_after,
                                integer=True, minimum=1),
        queue_timeout=as_number(settings, p + "queue_timeout", MailSettings.queue_timeout,
                                allow_zero=False),
        shutdown_timeout=as_number(settings, p + "shutdown_timeout", MailSettings.shutdown_timeout),
    )


def _outbox_url(settings: Mapping[str, Any]) -> str | None:
    """``mail.outbox_url``, else ``sqlalchemy.url``: the database holding the outbox table."""
    return _database_url(settings, ("mail.outbox_url", "sqlalchemy.url"))


def _database_url(settings: Mapping[str, Any], names: tuple[str, ...]) -> str | None:
    """The first of ``names`` that is set, checked as a SQLAlchemy URL."""
    for name in names:
        raw = settings.get(name)
        if raw is None or not str(raw).strip():
            continue
        url = str(raw).strip()
        try:
            from sqlalchemy.engine import make_url

            make_url(url)
        except Exception as exc:  # noqa: BLE001 -- any parse error is a configuration error
            raise _error(name, raw, f"is not a SQLAlchemy database URL ({exc})") from None
        return url
    return None
