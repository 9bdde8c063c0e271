"""The demo's own ``demo.*`` settings, converted explicitly; a bad value raises
:class:`pyramid.exceptions.ConfigurationError` naming the setting.

* ``demo.secret`` (required, >= 16 characters) -- signs login tokens.  The
  placeholder shipped in production.ini (and anything starting with
  ``change-me``) is refused everywhere; development.ini's own value is accepted
  (with a warning logged at start-up) -- it is public, so never deploy it.
* ``demo.public_url`` (``http(s)://host[:port][/path]``; unset: the development
  server's ``http://localhost:6543``, with a warning; malformed: an error) --
  the base of links in mails.  Links are never built from the request's Host
  header.  production.ini sets it (a test holds it there).
* ``demo.db_connect_timeout`` (seconds, default 5) and
  ``demo.db_statement_timeout`` (seconds, default 10; 0 = none) -- applied to
  PostgreSQL connections (libpq ``connect_timeout``, ``statement_timeout``).
* ``demo.db_retry_after`` (seconds, default 5) -- ``Retry-After`` of the 503
  answered when the database is unreachable or too slow.
* ``demo.login_limit`` (default 10) per ``demo.login_window`` (seconds, default
  60) -- login attempts allowed per client IP (wrong passwords per address +
  client: ``demo.login_free_failures``).
* ``demo.resend_interval`` (seconds, default 60) -- at most one verification
  mail per address in that time.
* ``demo.signup_limit`` (default 10) registrations + re-sends per client address and
  ``demo.signup_address_limit`` (default 3) per target address per
  ``demo.signup_window`` (seconds, default 600); ``demo.signup_daily_limit`` (default
  10) per target address per day -- 429 + ``Retry-After`` beyond.
* ``demo.login_free_failures`` (default 5) wrong passwords per address + client, then
  a wait of 1, 2, 4 ... seconds, at most ``demo.login_backoff_max`` (default 900).
* ``demo.hash_slots`` (default: half the CPUs this process may use, at least 1: one
  hash already runs on several cores) argon2 computations at once, and as many requests
  waiting at most ``demo.hash_wait`` (seconds, default 0.5) for a slot; others answer
  503 + ``Retry-After`` at once.
* ``demo.token_ttl`` (seconds, default 3600) -- lifetime of a login token.
* ``demo.verify_ttl`` (seconds, default 86400) -- lifetime of a verification link.
* ``demo.max_body_bytes`` (default 65536) -- larger request bodies get 413.
* ``demo.argon2_time_cost`` (3), ``demo.argon2_memory_cost`` (KiB, 65536),
  ``demo.argon2_parallelism`` (4) -- password hashing cost (lower them in tests).
* ``demo.sample_password`` (unset: none) -- the sample teacher's published password:
  ``examcache-initdb`` gives it to the teacher it creates, and the login and home pages
  show it (development.ini).  Unset, initdb picks a random one and prints it once.
* ``demo.metrics_allow`` (networks; default ``127.0.0.0/8 ::1/128``) -- client addresses
  (``REMOTE_ADDR``, after the server's trusted-proxy handling) that may read
  ``examcache.metrics_path``; others get 404 (:mod:`demo_app.access`).
"""
from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pyramid.exceptions import ConfigurationError

from pyramid_examcache.settings import as_number

log = logging.getLogger(__name__)

#: the value shipped in production.ini: refused wherever it appears
PRODUCTION_PLACEHOLDER_SECRET = "change-me-to-a-long-random-string"
#: development.ini's value: accepted, with a warning (it is public)
DEVELOPMENT_SECRET = "dev-only-secret-public-never-deploy"
#: demo.public_url when unset: development.ini's server (pserve development.ini)
DEFAULT_PUBLIC_URL = "http://localhost:6543"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: demo.metrics_allow when unset: this host only
DEFAULT_METRICS_ALLOW: tuple[IPNetwork, ...] = (ipaddress.ip_network("127.0.0.0/8"),
                                                ipaddress.ip_network("::1/128"))


@dataclass(frozen=True)
class DemoSettings:
    secret: str
    public_url: str
    token_ttl: int = 3600
    verify_ttl: int = 86400
    max_body_bytes: int = 65536
    argon2_time_cost: int = 3
    argon2_memory_cost: int = 65536
    argon2_parallelism: int = 4
    db_connect_timeout: float = 5.0
    db_statement_timeout: float = 10.0
    db_retry_after: int = 5
    login_limit: int = 10
    login_window: int = 60
    signup_limit: int = 10
    signup_address_limit: int = 3
    signup_window: int = 600
    signup_daily_limit: int = 10
    login_free_failures: int = 5
    login_backoff_max: int = 900
    hash_slots: int = 0  # 0: half the CPUs this process may use (parse_demo_settings)
    hash_wait: float = 0.5
    resend_interval: int = 60
    sample_password: str | None = None
    metrics_allow: tuple[IPNetwork, ...] = DEFAULT_METRICS_ALLOW


_SECRET_HELP = ("it signs the login tokens; generate one with "
                "python -c 'import secrets; print(secrets.token_hex(32))'")


def parse_secret(settings: Mapping[str, Any]) -> str:
    secret = str(settings.get("demo.secret") or "").strip()
    if len(secret) < 16:
        raise ConfigurationError(
            f"Invalid setting demo.secret: required, at least 16 characters ({_SECRET_HELP})")
    if secret == PRODUCTION_PLACEHOLDER_SECRET or secret.lower().startswith("change-me"):
        raise ConfigurationError(
            f"Invalid setting demo.secret: {secret!r} is the placeholder from production.ini; "
            f"anyone could forge login tokens with it. Set your own ({_SECRET_HELP})")
    if secret == DEVELOPMENT_SECRET:
        log.warning("demo.secret is development.ini's public value: fine on localhost, "
                    "never deploy it")
    return secret


def parse_public_url(settings: Mapping[str, Any]) -> str:
    raw = settings.get("demo.public_url")
    allowed = ("allowed: http(s)://host[:port][/path], no user, query or fragment, "
               "e.g. https://exams.example.com")
    url = str(raw or "").strip()
    if not url:  # the development server's own address -- never the request's Host header
        log.warning("demo.public_url is not set: links in mails point at %s; set it to the "
                    "public address of this site (production.ini must)", DEFAULT_PUBLIC_URL)
        return DEFAULT_PUBLIC_URL
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        parts, port = None, None
    if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname
            or parts.username is not None or parts.password is not None or parts.query
            or parts.fragment or "?" in url or "#" in url or port == 0
            or any(c.isspace() or ord(c) < 32 for c in url)):
        raise ConfigurationError(f"Invalid setting demo.public_url={url!r}: {allowed}")
    return url.rstrip("/")


def parse_sample_password(settings: Mapping[str, Any]) -> str | None:
    password = str(settings.get("demo.sample_password") or "")
    if not password.strip():
        return None
    if len(password) < 8 or not password.isprintable():
        raise ConfigurationError(
            "Invalid setting demo.sample_password: at least 8 printable characters (or "
            "leave it unset: examcache-initdb then prints a random password)")
    log.warning("demo.sample_password is set: the sample teacher's password is shown on the "
                "login and home pages; leave it unset on a public site")
    return password


def parse_metrics_allow(settings: Mapping[str, Any]) -> tuple[IPNetwork, ...]:
    raw = str(settings.get("demo.metrics_allow") or "").split()
    if not raw:
        return DEFAULT_METRICS_ALLOW
    networks = []
    for item in raw:
        try:
            networks.append(ipaddress.ip_network(item))
        except ValueError as exc:
            raise ConfigurationError(
                f"Invalid setting demo.metrics_allow: {item!r} is not a network ({exc}); "
                f"write networks such as 127.0.0.1/32 ::1/128 10.0.0.0/8") from None
    return tuple(networks)


def default_hash_slots() -> int:
    """demo.hash_slots when unset: half the CPUs this process may run on, at least 1
    (argon2's lanes, demo.argon2_parallelism, already spread one hash over cores)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus // 2)


def parse_demo_settings(settings: Mapping[str, Any]) -> DemoSettings:
    secret = parse_secret(settings)
    public_url = parse_public_url(settings)
    d = DemoSettings

    def integer(name: str, default: int, minimum: int = 1) -> int:
        return as_number(settings, "demo." + name, default, integer=True, minimum=minimum)

    def number(name: str, default: float, allow_zero: bool = True) -> float:
        return as_number(settings, "demo." + name, default, allow_zero=allow_zero)

    return DemoSettings(
        secret=secret,
        public_url=public_url,
        token_ttl=integer("token_ttl", d.token_ttl),
        verify_ttl=integer("verify_ttl", d.verify_ttl),
        max_body_bytes=integer("max_body_bytes", d.max_body_bytes, minimum=256),
        argon2_time_cost=integer("argon2_time_cost", d.argon2_time_cost),
        argon2_memory_cost=integer("argon2_memory_cost", d.argon2_memory_cost, minimum=8),
        argon2_parallelism=integer("argon2_parallelism", d.argon2_parallelism),
        db_connect_timeout=number("db_connect_timeout", d.db_connect_timeout, allow_zero=False),
        db_statement_timeout=number("db_statement_timeout", d.db_statement_timeout),
        db_retry_after=integer("db_retry_after", d.db_retry_after),
        login_limit=integer("login_limit", d.login_limit),
        login_window=integer("login_window", d.login_window),
        signup_limit=integer("signup_limit", d.signup_limit),
        signup_address_limit=integer("signup_address_limit", d.signup_address_limit),
        signup_window=integer("signup_window", d.signup_window),
        signup_daily_limit=integer("signup_daily_limit", d.signup_daily_limit),
        login_free_failures=integer("login_free_failures", d.login_free_failures, minimum=0),
        login_backoff_max=integer("login_backoff_max", d.login_backoff_max),
        hash_slots=integer("hash_slots", default_hash_slots()),
        hash_wait=number("hash_wait", d.hash_wait),
        resend_interval=integer("resend_interval", d.resend_interval),
        sample_password=parse_sample_password(settings),
        metrics_allow=parse_metrics_allow(settings),
    )


def get_demo_settings(request_or_registry) -> DemoSettings:
    registry = getattr(request_or_registry, "registry", request_or_registry)
    return registry["demo.settings"]
