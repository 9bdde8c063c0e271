"""Every setting of the package: one table, one parser, one error helper.

Each ``examcache.*`` and ``mail.*`` setting has one :class:`Setting` row (name, converter,
default, allowed range or choices, help) in :data:`CACHE_TABLE` or :data:`MAIL_TABLE`;
:func:`read_table` converts them all the same way (no guessing of types from strings),
and :func:`setting_error` / :func:`conflict_error` make the
:class:`pyramid.exceptions.ConfigurationError` naming the setting(s) and what is allowed.
The cache, the mailer, the admin page and the metrics route read only the typed objects
returned here (:func:`parse_cache_settings`, :func:`parse_mail_settings`,
:func:`parse_admin_settings`, :func:`parse_metrics_settings`, or all at once
:func:`parse_settings`); no other module reads a raw setting.

Names are checked against the tables: an unknown ``examcache.*`` name is a
ConfigurationError suggesting the closest valid one; an unknown ``mail.*`` name (a prefix
shared with pyramid_mailer, whose own names are accepted silently) is logged once per
process as a WARNING of the ``pyramid_examcache.settings`` logger with the same suggestion.

The near cache is one choice, ``examcache.near_cache`` (``off``, ``check``, ``barrier``,
``lease``), with ``examcache.near_cache_mb``, ``examcache.lease_ms`` and
``examcache.early_hits``; unset, each follows the topology (:func:`resolve_near_cache`). A
value given explicitly that cannot take effect is a ConfigurationError naming both
settings. ``examcache.tracking`` and ``examcache.tracking_lease_ms`` (the names before) are
still accepted, with a DeprecationWarning each (:data:`DEPRECATED_SETTINGS`).
"""
from __future__ import annotations

import difflib
import logging
import os
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any
from urllib.parse import urlsplit

from pyramid.exceptions import ConfigurationError
from pyramid.settings import asbool

from .rates import Rate, parse_domain_rates, parse_rates

CACHE_SCHEMES = ("redis", "rediss", "unix", "memory", "redis+sentinel", "rediss+sentinel",
                 "redis+cluster", "rediss+cluster")
QUEUE_SCHEMES = ("redis", "rediss", "unix", "sqlite", "redis+sentinel", "rediss+sentinel")
#: ``mail.queue_url = memory://``: the in-process queue that only the testing include has
IN_PROCESS_QUEUE = "memory://"
#: why the mail queue refuses a cluster URL
QUEUE_NO_CLUSTER = ("Huey's Redis storage is a plain redis-py client whose queue, schedule and "
                    "result keys are separate keys used together (multi-key commands and a "
                    "Lua script across them), which Redis Cluster refuses (CROSSSLOT); use "
                    "redis+sentinel:// (or redis:// to one node) for mail.queue_url")
MAIL_TRANSPORTS = ("smtp", "file", "memory")
#: ``mail.default_priority`` and ``send_queued(priority=...)``: Huey priorities 10, 0, -10
MAIL_PRIORITIES = ("high", "normal", "low")
#: ``examcache.near_cache``: no near cache; one validated by a round trip per hit; kept
#: exact by CLIENT TRACKING with a barrier per read; the same with read leases
NEAR_CACHE_MODES = ("off", "check", "barrier", "lease")
DEFAULT_PERMISSION = "examcache.admin"
_BOOLS = ("true", "false", "yes", "no", "on", "off", "1", "0", "y", "n", "t", "f")
_PATH = re.compile(r"/(?:[A-Za-z0-9._~-]+/)*[A-Za-z0-9._~-]+/?")
_PERMISSION = re.compile(r"[^\s\x00-\x1f\x7f]{1,200}")

log = logging.getLogger(__name__)


# -- errors ------------------------------------------------------------------------------------

def setting_error(name: str, value: Any, allowed: str) -> ConfigurationError:
    """The error for one bad setting: its name, the value given and what is allowed."""
    return ConfigurationError(f"Invalid setting {name} = {value!r}: {allowed}")


def conflict_error(name: str, value: Any, other: str, other_value: Any,
                   why: str) -> ConfigurationError:
    """The error for two settings that cannot take effect together (both named)."""
    return ConfigurationError(f"Invalid setting {name} = {value!r} with {other} = "
                              f"{other_value!r}: {why}")


_error = setting_error  # the name used throughout this module


# -- the table ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Setting:
    """One setting: ``convert(self, raw)`` turns a given value (never None) into its type;
    an absent one is ``default``."""
    name: str
    convert: Callable[[Setting, Any], Any]
    default: Any
    help: str
    minimum: float = 0.0
    maximum: float | None = None
    allow_zero: bool = True
    integer: bool = False
    choices: tuple[str, ...] = ()

    @property
    def short(self) -> str:
        return self.name.split(".", 1)[1]


def _blank(raw: Any) -> bool:
    return raw is None or (isinstance(raw, str) and not raw.strip())


def _number(spec: Setting, raw: Any) -> float | int | None:
    """A number >= ``minimum`` (<= ``maximum``), an int when ``integer``; blank: the default."""
    if _blank(raw):
        if spec.default is None:
            return None
        raw = spec.default
    try:
        value = int(str(raw).strip()) if spec.integer else float(str(raw).strip())
    except ValueError:
        raise _error(spec.name, raw, f"must be {'an integer' if spec.integer else 'a number'}"
                     ) from None
    if spec.maximum is not None and not spec.minimum <= value <= spec.maximum:
        raise _error(spec.name, raw, f"must be between {spec.minimum:g} and {spec.maximum:g}")
    if value < spec.minimum or (not spec.allow_zero and value == 0):
        bound = (f"> {spec.minimum}" if not spec.allow_zero and spec.minimum == 0
                 else f">= {spec.minimum}")
        raise _error(spec.name, raw, f"must be {bound}")
    return value


def _boolean(spec: Setting, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text not in _BOOLS:
        raise _error(spec.name, raw, "must be a boolean (true/false)")
    return asbool(text)


def _text(spec: Setting, raw: Any) -> str:
    return str(raw).strip()


def _raw_text(spec: Setting, raw: Any) -> str:
    return str(raw)


def _optional(spec: Setting, raw: Any) -> Any:
    return raw or None


def _choice(spec: Setting, raw: Any) -> str:
    value = str(raw).strip()
    if value not in spec.choices:
        raise _error(spec.name, value, f"must be one of {', '.join(spec.choices)}")
    return value


def _lease_ms(spec: Setting, raw: Any) -> int:
    value = _number(replace(spec, minimum=0.0, maximum=None), raw)
    if spec.allow_zero and value == 0:
        return 0
    if value is None or not 200 <= value <= 60000:  # (None: never, the specs have a default)
        allowed = "0 (off) or between" if spec.allow_zero else "between"
        raise _error(spec.name, value, f"must be {allowed} 200 and 60000 (milliseconds)")
    return int(value)  # (an int already: the specs say integer)


def _key_prefix(spec: Setting, raw: Any) -> str:
    prefix = str(raw)
    if not prefix or any(c.isspace() for c in prefix):
        raise _error(spec.name, prefix, "must be a non-empty string without whitespace")
    return prefix


def _session_attr(spec: Setting, raw: Any) -> str:
    value = str(raw).strip()
    if not value.isidentifier():
        raise _error(spec.name, value, "must be a request attribute name")
    return value


def _request_attr(spec: Setting, raw: Any) -> str:
    value = str(raw).strip()
    if not value.isidentifier() or value.startswith("_"):
        raise _error(spec.name, value,
                     "must be a request attribute name, e.g. mailer or outbox_mailer")
    return value


def _sender(spec: Setting, raw: Any) -> str:
    value = str(raw).strip()
    if "@" not in value or any(c in value for c in "\r\n"):
        raise _error(spec.name, value,
                     "must be a mail address, e.g. no-reply@example.com or 'Name <a@b.c>'")
    return value


def _url(spec: Setting, raw: Any) -> str:
    return _check_url(spec.name, raw, str(raw or spec.default).strip(), spec.choices)


def _database(spec: Setting, raw: Any) -> str | None:
    return _database_url({spec.name: raw}, (spec.name,))


def _admin_path(spec: Setting, raw: Any) -> str | None:
    """The prefix of the admin routes without its trailing slash; blank: None (off)."""
    path = str(raw).strip()
    if not path:
        return None
    segments = path.strip("/").split("/")
    if not _PATH.fullmatch(path) or any(s in (".", "..") for s in segments):
        raise _error(spec.name, raw,
                     "must be an absolute URL path below the root such as /_examcache/ "
                     "(letters, digits, '.', '_', '~', '-' in segments separated by single "
                     "'/'; no '.' or '..' segment; leave it unset to turn the page off)")
    return path.rstrip("/")


def _permission(spec: Setting, raw: Any) -> str:
    permission = str(raw).strip()
    if not _PERMISSION.fullmatch(permission):
        raise _error(spec.name, raw, "must be a permission name (1-200 characters, no whitespace)")
    return permission


def _login_url(spec: Setting, raw: Any) -> str | None:
    url = str(raw).strip()
    if url and not (url.startswith("/") and not url.startswith("//")
                    and _PERMISSION.fullmatch(url)
                    or re.fullmatch(r"https?://[^\s\x00-\x1f\x7f]+", url)):
        raise _error(spec.name, raw,
                     "must be a path on this site (/login) or an http(s) URL, without spaces")
    return url or None


def _metrics_path(spec: Setting, raw: Any) -> str | None:
    path = str(raw or "").strip()
    if path and (not path.startswith("/") or any(c.isspace() or c in "?#{}" for c in path)):
        raise _error(spec.name, path, "must be a path such as /metrics")
    return path or None


def _rate_limit(spec: Setting, raw: Any) -> tuple[Rate, ...]:
    return parse_rates(spec.name, raw)


def _domain_rate_limits(spec: Setting, raw: Any) -> tuple[tuple[str, Rate], ...]:
    return tuple(parse_domain_rates(spec.name, raw).items())


def _num(name: str, default: float | None, help: str, **kw: Any) -> Setting:
    return Setting(name, _number, default, help, **kw)


def _int(name: str, default: int | None, help: str, **kw: Any) -> Setting:
    return Setting(name, _number, default, help, integer=True, **kw)


def _bool(name: str, default: bool, help: str) -> Setting:
    return Setting(name, _boolean, default, help)


def _c(name: str) -> str:
    return "examcache." + name


def _m(name: str) -> str:
    return "mail." + name


#: Every ``examcache.*`` setting (docs/configuration.md is generated from it); defaults of None are
#: resolved by the parser (from another setting or the topology).
CACHE_TABLE: tuple[Setting, ...] = (
    Setting(_c("redis_url"), _url, "memory://", "the cache's Redis (or memory://)",
            choices=CACHE_SCHEMES),
    Setting(_c("key_prefix"), _key_prefix, "examcache:", "prefix of every key"),
    _int(_c("default_ttl"), 3600, "seconds a value lives", allow_zero=False),
    _num(_c("socket_timeout"), 0.25, "seconds per Redis call", allow_zero=False),
    _num(_c("lock_timeout"), 5.0, "seconds a fill lease lasts", allow_zero=False),
    _num(_c("wait_timeout"), None, "seconds a reader waits (= lock_timeout)", allow_zero=False),
    _int(_c("breaker_threshold"), 3, "errors that open the breaker", minimum=1),
    _num(_c("breaker_reset"), 2.0, "seconds the breaker stays open", allow_zero=False),
    Setting(_c("near_cache"), _choice, None, "the near cache's mode (default: by topology)",
            choices=NEAR_CACHE_MODES),
    _num(_c("near_cache_mb"), 32.0, "the near cache's size (0 = none)"),
    Setting(_c("lease_ms"), _lease_ms, 1000, "read lease length (ms)", allow_zero=False,
            integer=True),
    Setting(_c("early_hits"), _boolean, None, "cached-view hits from a tween "
            "(default: on with barrier, lease or memory://)"),
    _bool(_c("enabled"), True, "false: every read bypasses the cache"),
    _int(_c("max_value_bytes"), 1048576, "larger values are not stored", allow_zero=False),
    _bool(_c("require_registration"), False, "unregistered sessions raise"),
    _bool(_c("invalidation_log"), True, "the durable invalidation log"),
    Setting(_c("invalidation_log_url"), _database, None, "its database (= sqlalchemy.url)"),
    _num(_c("relay_interval"), 1.0, "seconds between relay passes", allow_zero=False),
    _num(_c("relay_after"), 2.0, "seconds before a log row is relayed"),
    Setting(_c("admin_path"), _admin_path, None, "the admin page's path (unset: off)"),
    Setting(_c("admin_permission"), _permission, DEFAULT_PERMISSION, "the admin permission"),
    Setting(_c("admin_login_url"), _login_url, None, "where anonymous admin browsers go"),
    Setting(_c("metrics_path"), _metrics_path, None, "the Prometheus route (unset: off)"),
)

#: old names still read (one release), each mapped onto its new name with a DeprecationWarning
DEPRECATED_TABLE: tuple[Setting, ...] = (
    _bool(_c("tracking"), True, "deprecated: examcache.near_cache"),
    Setting(_c("tracking_lease_ms"), _lease_ms, 1000, "deprecated: examcache.lease_ms",
            integer=True),
)
DEPRECATED_SETTINGS: dict[str, str] = {
    _c("tracking"): _c("near_cache"), _c("tracking_lease_ms"): _c("lease_ms")}

#: Every ``mail.*`` setting the package reads.
MAIL_TABLE: tuple[Setting, ...] = (
    Setting(_m("host"), _text, "localhost", "the SMTP server"),
    _int(_m("port"), None, "its port (25; 465 with ssl, 587 with tls)", minimum=1,
         maximum=65535),
    Setting(_m("username"), _optional, None, "SMTP AUTH user"),
    Setting(_m("password"), _optional, None, "SMTP AUTH password"),
    _bool(_m("tls"), False, "STARTTLS"),
    _bool(_m("ssl"), False, "SMTP over TLS"),
    _num(_m("timeout"), 10.0, "SMTP socket timeout", allow_zero=False),
    Setting(_m("default_sender"), _sender, "no-reply@localhost", "the From of mails"),
    Setting(_m("transport"), _choice, "file", "smtp, file or memory", choices=MAIL_TRANSPORTS),
    Setting(_m("file_dir"), _raw_text, "var/mail", "where the file transport writes"),
    Setting(_m("queue_url"), _url, "sqlite:///var/huey.sqlite", "Huey's storage",
            choices=QUEUE_SCHEMES),
    Setting(_m("queue_name"), _text, "examcache-mail", "Huey's queue name"),
    _int(_m("retries"), 3, "delivery retries"),
    _num(_m("retry_delay"), 2.0, "first retry delay (s)"),
    _num(_m("retry_backoff"), 2.0, "delay multiplier", minimum=1),
    _num(_m("max_retry_delay"), 600.0, "largest retry delay (s)", allow_zero=False),
    _num(_m("max_age"), 86400.0, "seconds before a mail expires", allow_zero=False),
    _bool(_m("smtputf8"), False, "allow non-ASCII addresses"),
    _bool(_m("allow_plaintext_auth"), False, "AUTH without TLS"),
    _int(_m("smtp_max_messages_per_connection"), 100,
         "messages per SMTP connection (0: no limit)"),
    Setting(_m("rate_limit"), _rate_limit, (), "sends per window, e.g. 14/s or 14/s, 50000/d "
            "(unset: no limit)"),
    Setting(_m("domain_rate_limits"), _domain_rate_limits, (),
            "per recipient domain, e.g. gmail.com=20/s, example.org=5/m"),
    _int(_m("keep_completed"), 3600, "seconds completed jobs are kept"),
    _int(_m("keep_failed"), 604800, "seconds failed jobs are kept"),
    _num(_m("idempotency_window"), 86400.0, "seconds an idempotency key dedupes",
         allow_zero=False),
    Setting(_m("default_priority"), _choice, "normal", "high, normal or low",
            choices=MAIL_PRIORITIES),
    _int(_m("workers"), 2, "consumer threads", minimum=1),
    _int(_m("relay_interval"), 60, "seconds between outbox relays", minimum=1),
    Setting(_m("session_attr"), _session_attr, "dbsession", "the request's SQLAlchemy session"),
    Setting(_m("request_attr"), _request_attr, "mailer", "the request attribute of the mailer"),
    _int(_m("max_message_bytes"), 10 * 1024 * 1024, "largest message", allow_zero=False),
    Setting(_m("outbox_url"), _database, None, "the outbox database (= sqlalchemy.url)"),
    _num(_m("lease"), 120.0, "seconds a delivery is leased", allow_zero=False),
    _int(_m("requeue_after"), 900, "seconds before a stuck job is requeued", minimum=1),
    _num(_m("queue_timeout"), 2.0, "seconds to reach the queue", allow_zero=False),
    _num(_m("shutdown_timeout"), 30.0, "seconds the consumer drains on stop"),
)

CACHE_SETTINGS: frozenset[str] = frozenset(s.name for s in CACHE_TABLE)
MAIL_SETTINGS: frozenset[str] = frozenset(s.name for s in MAIL_TABLE)
_ROWS: dict[str, Setting] = {s.name: s for s in (*CACHE_TABLE, *DEPRECATED_TABLE, *MAIL_TABLE)}
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


def is_given(settings: Mapping[str, Any], name: str) -> bool:
    """Was ``name`` set to something (not absent, not blank)?"""
    return not _blank(settings.get(name))


def read(settings: Mapping[str, Any], name: str) -> Any:
    """The value of one setting of the tables: converted, or its default when absent."""
    spec = _ROWS[name]
    raw = settings.get(name)
    return spec.default if raw is None else spec.convert(spec, raw)


def read_table(settings: Mapping[str, Any], table: tuple[Setting, ...]) -> dict[str, Any]:
    """Every setting of ``table`` by short name (``redis_url``), converted."""
    return {spec.short: read(settings, spec.name) for spec in table}


# -- names -------------------------------------------------------------------------------------

def _unknown(settings: Mapping[str, Any], prefix: str, valid: frozenset[str],
             accepted: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """``(name, "Unknown setting name; did you mean Y?")`` for each name under ``prefix``
    that is neither in ``valid`` nor in ``accepted``."""
    messages = []
    shorts = sorted(name[len(prefix):] for name in valid)
    for name in sorted(k for k in settings if isinstance(k, str) and k.startswith(prefix)):
        if name in valid or name in accepted:
            continue
        close = difflib.get_close_matches(name[len(prefix):], shorts, n=1)
        hint = (f"did you mean {prefix}{close[0]}?" if close
                else f"the {prefix}* settings are {', '.join(prefix + s for s in shorts)}")
        messages.append((name, f"Unknown setting {name}; {hint}"))
    return messages


def check_cache_names(settings: Mapping[str, Any]) -> None:
    """Refuse any ``examcache.*`` name that is not in :data:`CACHE_SETTINGS` (nor a
    deprecated one): a ConfigurationError naming it and the closest valid name."""
    messages = _unknown(settings, "examcache.", CACHE_SETTINGS, frozenset(DEPRECATED_SETTINGS))
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


# -- the readers other code may call (the demo's own settings use as_number) ------------------

def as_number(settings: Mapping[str, Any], name: str, default: float, *,
              minimum: float = 0.0, integer: bool = False, allow_zero: bool = True):
    """Read ``name`` as a number >= ``minimum`` (an int when ``integer``)."""
    spec = Setting(name, _number, default, "", minimum=minimum, integer=integer,
                   allow_zero=allow_zero)
    return _number(spec, settings.get(name, default))


def as_bool(settings: Mapping[str, Any], name: str, default: bool) -> bool:
    return _boolean(Setting(name, _boolean, default, ""), settings.get(name, default))


def as_url(settings: Mapping[str, Any], name: str, default: str, schemes: tuple[str, ...]) -> str:
    raw = settings.get(name, default)
    return _check_url(name, raw, str(raw or default).strip(), schemes)


def _check_url(name: str, raw: Any, url: str, schemes: tuple[str, ...]) -> str:
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
    _check_url_parts(name, raw, url, parts)
    return url


def _check_url_parts(name: str, raw: Any, url: str, parts) -> None:
    if parts.scheme in ("redis", "rediss") and not parts.hostname:
        raise _error(name, raw, "a redis URL needs a host, e.g. redis://127.0.0.1:6379/0")
    if parts.scheme in ("redis", "rediss"):
        db = parts.path.strip("/")
        if db and not db.isdigit():
            raise _error(name, raw, "the database in a redis URL must be a number "
                         "(redis://host:port/0)")
    if parts.scheme == "unix" and not parts.path:
        raise _error(name, raw, "a unix URL needs a socket path, e.g. unix:///run/redis.sock")
    if parts.scheme == "sqlite" and not url[len("sqlite://"):].strip("/"):
        raise _error(name, raw, "a sqlite URL needs a file path, e.g. sqlite:///var/huey.sqlite")


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




# -- the near cache: one mode, resolved per topology -----------------------------------------

_NEAR = ("near_cache", "near_cache_mb", "lease_ms", "early_hits")


def topology_kind(redis_url: str) -> str:
    """``memory``, ``cluster``, ``sentinel`` or ``single`` (redis://, rediss://, unix://)."""
    if redis_url.startswith("memory://"):
        return "memory"
    from .topology import parse

    return parse(redis_url).kind


def _both(first: tuple[str, Any], second: tuple[str, Any], why: str) -> ConfigurationError:
    return conflict_error(first[0], first[1], second[0], second[1], why)


def _map_deprecated(settings: Mapping[str, Any], values: dict[str, Any],
                    given: dict[str, str], kind: str) -> bool:
    """Map ``examcache.tracking`` / ``tracking_lease_ms`` onto ``near_cache`` / ``lease_ms``
    (a DeprecationWarning each; an old and its new name together are refused). Returns
    True when ``tracking_lease_ms = 0`` turned read leases off."""
    for old, new in DEPRECATED_SETTINGS.items():
        if not is_given(settings, old):
            continue
        if is_given(settings, new):
            raise _both((old, settings[old]), (new, settings[new]),
                        f"{old} is the deprecated name of {new}: give only {new}")
        warnings.warn(f"{old} is deprecated (accepted for one release): use {new} "
                      f"(see docs/configuration.md)", DeprecationWarning, stacklevel=4)
    leases_off = False
    if is_given(settings, _c("tracking_lease_ms")):
        old_ms = read(settings, _c("tracking_lease_ms"))
        leases_off = old_ms == 0
        if not leases_off:
            values["lease_ms"], given["lease_ms"] = old_ms, _c("tracking_lease_ms")
            if not is_given(settings, _c("near_cache")):  # what it meant: leases on
                values["near_cache"], given["near_cache"] = "lease", _c("tracking_lease_ms")
    if is_given(settings, _c("tracking")):
        if read(settings, _c("tracking")):
            mode = "barrier" if leases_off else "lease"
        else:  # what tracking = false left: the validated near cache, if any
            mode = "check" if values["near_cache_mb"] > 0 and kind != "memory" else "off"
        values["near_cache"], given["near_cache"] = mode, _c("tracking")
    return leases_off


#: the near-cache modes whose held values early hits may serve (``barrier`` after its barrier)
EARLY_MODES = ("barrier", "lease")


def _default_mode(kind: str, size_mb: float) -> str:
    """The default mode per topology: memory:// has no near cache; every Redis topology
    tracks with a barrier per read (fenced by the primaries' identity on Sentinel and
    Cluster). Read leases (``lease``, a single Redis only) are opt-in: they make hits free
    but every write waits for every lease holder, which missed the write goals as processes
    multiply (bench/RESULTS.md, "Write scaling")."""
    if kind == "memory" or size_mb <= 0:
        return "off"
    return "barrier"


def _check_topology(settings: Mapping[str, Any], given: dict[str, str], kind: str,
                    mode: str) -> None:
    """Explicit near-cache settings the topology cannot honour."""
    url = (_c("redis_url"), settings.get(_c("redis_url"), "memory://"))
    name = given.get("near_cache")
    if kind == "memory":
        if name and mode != "off":
            raise _both((name, settings[name]), url, "memory:// keeps every value in this "
                        "process: it has no near cache (use off or leave it unset)")
        if "near_cache_mb" in given and read(settings, given["near_cache_mb"]) > 0:
            raise _both((given["near_cache_mb"], settings[given["near_cache_mb"]]), url,
                        "memory:// has no near cache to size")
    if kind in ("sentinel", "cluster") and name and mode == "lease":
        raise _both((name, settings[name]), url, "lease (read leases) needs a single Redis, "
                    "not Sentinel or Cluster (use barrier, check or off)")
    if kind != "single" and "lease_ms" in given:
        raise _both((given["lease_ms"], settings[given["lease_ms"]]), url,
                    "read leases need a single Redis (not memory://, Sentinel or Cluster)")


def _check_mode(settings: Mapping[str, Any], given: dict[str, str], kind: str, mode: str,
                size_mb: float, leases_off: bool) -> None:
    """Explicit near-cache settings that contradict the mode (or each other)."""
    name = given.get("near_cache", _c("near_cache"))
    shown = (name, settings.get(name, mode))
    if "near_cache" in given and "near_cache_mb" in given:
        size = (given["near_cache_mb"], settings[given["near_cache_mb"]])
        if mode != "off" and size_mb <= 0:
            raise _both(shown, size, f"near_cache = {mode} needs examcache.near_cache_mb > 0")
        if mode == "off" and size_mb > 0:
            raise _both(shown, size, "near_cache = off has no near cache to size")
    if mode == "barrier" and "lease_ms" in given:
        raise _both((given["lease_ms"], settings[given["lease_ms"]]), shown,
                    "barrier has no read leases (lease_ms applies to lease, check and off)")
    if mode == "lease" and leases_off and "near_cache" in given:
        raise _both(shown, (_c("tracking_lease_ms"), settings[_c("tracking_lease_ms")]),
                    "lease needs read leases, which tracking_lease_ms = 0 turns off")
    if "early_hits" in given and read(settings, _c("early_hits")) \
            and mode not in EARLY_MODES and kind != "memory":
        raise _both((_c("early_hits"), settings[_c("early_hits")]), shown,
                    "early hits need a near cache this process vouches for: "
                    "examcache.near_cache = barrier (after its barrier, every topology) or "
                    "lease (read leases, a single Redis), or memory://")


def resolve_near_cache(settings: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """``near_cache``, ``near_cache_mb``, ``lease_ms`` (0: no read leases, neither held nor
    waited for) and ``early_hits`` for ``values["redis_url"]``: unset ones as each topology
    behaved by default, explicit ones checked to take effect."""
    values = dict(values)
    given = {short: _c(short) for short in _NEAR if is_given(settings, _c(short))}
    kind = topology_kind(values["redis_url"])
    leases_off = _map_deprecated(settings, values, given, kind)
    size_mb = values["near_cache_mb"]
    mode = (values["near_cache"] if "near_cache" in given
            else _default_mode(kind, size_mb))
    _check_topology(settings, given, kind, mode)
    _check_mode(settings, given, kind, mode, size_mb, leases_off)
    early = values["early_hits"] if "early_hits" in given else (mode in EARLY_MODES
                                                                or kind == "memory")
    return {"near_cache": mode, "near_cache_mb": size_mb if mode != "off" else 0.0,
            "lease_ms": 0 if mode == "barrier" or leases_off else values["lease_ms"],
            "early_hits": early}


# -- the typed settings ------------------------------------------------------------------------

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
    #: ``off``, ``check``, ``barrier`` or ``lease`` (:data:`NEAR_CACHE_MODES`)
    near_cache: str = "barrier"
    #: the near cache's size (0.0 when ``near_cache`` is ``off``)
    near_cache_mb: float = 32.0
    #: read leases (:mod:`.cache.backends.read_lease`): held by ``lease`` processes, waited
    #: for by every writer on a single Redis; 0 = no leases (``barrier``)
    lease_ms: int = 1000
    #: serve cached-view hits from a tween before pyramid_tm and the router (cache/early.py)
    early_hits: bool = True
    enabled: bool = True
    invalidation_log: bool = True
    invalidation_log_url: str | None = None
    relay_interval: float = 1.0
    relay_after: float = 2.0
    #: values (get_or_set JSON, cached view entities) larger than this are not stored
    max_value_bytes: int = 1048576
    #: a session never passed to ``register()`` that writes a ``__cache_keys__`` model
    #: raises :class:`~.cache.orm.UnregisteredSession` instead of a warning
    require_registration: bool = False

    @property
    def tracking(self) -> bool:
        """Deprecated: is the near cache kept exact by CLIENT TRACKING (barrier, lease)?"""
        return self.near_cache in ("barrier", "lease")

    @property
    def tracking_lease_ms(self) -> int:
        """Deprecated name of :attr:`lease_ms`."""
        return self.lease_ms


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
    smtp_max_messages_per_connection: int = 100
    rate_limit: tuple[Rate, ...] = ()
    domain_rate_limits: tuple[tuple[str, Rate], ...] = ()
    keep_completed: int = 3600
    keep_failed: int = 604800
    idempotency_window: float = 86400.0
    default_priority: str = "normal"
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


@dataclass(frozen=True)
class AdminSettings:
    #: the prefix of the admin routes, without its trailing slash (``/_examcache``); None: off
    prefix: str | None
    permission: str
    login_url: str | None


@dataclass(frozen=True)
class MetricsSettings:
    #: the route of the text exposition (``/metrics``); None: off
    path: str | None


@dataclass(frozen=True)
class Settings:
    """Everything the package reads, parsed (:func:`parse_settings`)."""
    cache: CacheSettings
    mail: MailSettings
    admin: AdminSettings
    metrics: MetricsSettings


def _typed(cls: type, values: Mapping[str, Any]) -> Any:
    return cls(**{f.name: values[f.name] for f in fields(cls)})


# -- the parsers -------------------------------------------------------------------------------

def parse_cache_settings(settings: Mapping[str, Any]) -> CacheSettings:
    """Validate the ``examcache.*`` settings (names and values) and return them typed."""
    check_cache_names(settings)
    values = read_table(settings, CACHE_TABLE)
    prefix = values["key_prefix"]
    if topology_kind(values["redis_url"]) == "cluster" and ("{" in prefix or "}" in prefix):
        raise _error(_c("key_prefix"), prefix, "must not contain { or } with a redis+cluster:// "
                     "URL (the cache puts each key's hash tag in braces)")
    if values["wait_timeout"] is None:
        values["wait_timeout"] = values["lock_timeout"]
    if values["invalidation_log_url"] is None:
        values["invalidation_log_url"] = _database_url(settings, ("sqlalchemy.url",))
    values.update(resolve_near_cache(settings, values))
    return _typed(CacheSettings, values)


def _check_mail(settings: Mapping[str, Any], v: dict[str, Any]) -> None:
    """The rules between ``mail.*`` settings (and the sender's syntax)."""
    if v["tls"] and v["ssl"]:
        raise _error(_m("tls"), "true", "mail.tls (STARTTLS) and mail.ssl cannot both be true")
    if v["port"] is None:
        v["port"] = 465 if v["ssl"] else (587 if v["tls"] else MailSettings.port)
    from .mail.message import InvalidAddress, validate_address

    try:
        validate_address(v["default_sender"], _m("default_sender"), smtputf8=v["smtputf8"])
    except InvalidAddress as exc:
        raise _error(_m("default_sender"), v["default_sender"], str(exc)) from None
    if (v["transport"] == "smtp" and v["username"] and not (v["tls"] or v["ssl"])
            and not v["allow_plaintext_auth"]):
        raise _error(_m("username"), v["username"],
                     "SMTP AUTH would send the password in clear text: set mail.tls = true "
                     "(STARTTLS) or mail.ssl = true, or mail.allow_plaintext_auth = true to "
                     "allow it anyway")
    if v["max_retry_delay"] < v["retry_delay"]:
        raise _error(_m("max_retry_delay"), v["max_retry_delay"],
                     f"must be >= mail.retry_delay ({v['retry_delay']:g})")


def _mail_paths(settings: Mapping[str, Any], v: dict[str, Any]) -> None:
    """Relative ``mail.file_dir`` and ``sqlite:///`` queue paths are under ``here``."""
    here = settings.get("here")
    if not here:
        return
    if not os.path.isabs(v["file_dir"]):
        v["file_dir"] = os.path.join(here, v["file_dir"])
    if v["queue_url"].startswith("sqlite:///"):
        path = v["queue_url"][len("sqlite:///"):]
        if not os.path.isabs(path):
            v["queue_url"] = "sqlite:///" + os.path.join(here, path)


def parse_mail_settings(settings: Mapping[str, Any], *, in_process: bool = False) -> MailSettings:
    """Validate the ``mail.*`` settings and return them typed (unknown names: a warning).

    ``mail.queue_url = memory://`` only ``in_process``: when the testing include's
    in-process queue replaces Huey (``pyramid_examcache.testing``)."""
    check_mail_names(settings)
    queue_url = str(settings.get(_m("queue_url")) or "").strip()
    memory = queue_url.startswith("memory:")
    if memory:
        if not in_process:
            raise setting_error(_m("queue_url"), queue_url, "memory:// is the in-process test "
                                "mode: add config.include('pyramid_examcache.testing') (nothing "
                                "else would deliver the mail)")
        settings = {k: v for k, v in settings.items() if k != _m("queue_url")}
    values = read_table(settings, MAIL_TABLE)
    if memory:
        values["queue_url"] = IN_PROCESS_QUEUE
    _check_mail(settings, values)
    _mail_paths(settings, values)
    if values["outbox_url"] is None:  # the database holding the outbox table
        values["outbox_url"] = _database_url(settings, ("sqlalchemy.url",))
    return _typed(MailSettings, values)


def parse_admin_settings(settings: Mapping[str, Any]) -> AdminSettings:
    """``examcache.admin_path``, ``examcache.admin_permission`` and
    ``examcache.admin_login_url``; a bad value raises ConfigurationError naming it."""
    return AdminSettings(read(settings, _c("admin_path")), read(settings, _c("admin_permission")),
                         read(settings, _c("admin_login_url")))


def parse_metrics_settings(settings: Mapping[str, Any]) -> MetricsSettings:
    """``examcache.metrics_path`` (None: no metrics route)."""
    return MetricsSettings(read(settings, _c("metrics_path")))


def parse_settings(settings: Mapping[str, Any]) -> Settings:
    """Every setting the package reads: cache, mail, admin page and metrics."""
    return Settings(parse_cache_settings(settings), parse_mail_settings(settings),
                    parse_admin_settings(settings), parse_metrics_settings(settings))


__all__ = ["AdminSettings", "CacheSettings", "MailSettings", "MetricsSettings", "Settings",
           "Setting", "CACHE_TABLE", "MAIL_TABLE", "DEPRECATED_TABLE", "CACHE_SETTINGS",
           "MAIL_SETTINGS", "DEPRECATED_SETTINGS", "PYRAMID_MAILER_SETTINGS",
           "NEAR_CACHE_MODES", "DEFAULT_PERMISSION", "as_bool", "as_number", "as_url",
           "cache_setting", "check_cache_names", "check_mail_names", "conflict_error",
           "is_given", "parse_admin_settings", "parse_cache_settings", "parse_mail_settings",
           "parse_metrics_settings", "parse_settings", "read", "read_table",
           "resolve_near_cache", "setting_error", "topology_kind"]
