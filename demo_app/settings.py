"""The demo's own ``demo.*`` settings, converted explicitly; a bad value raises
:class:`pyramid.exceptions.ConfigurationError` naming the setting.

* ``demo.secret`` (required, >= 16 characters) -- signs login tokens.
* ``demo.token_ttl`` (seconds, default 3600) -- lifetime of a login token.
* ``demo.verify_ttl`` (seconds, default 86400) -- lifetime of a verification link.
* ``demo.max_body_bytes`` (default 65536) -- larger request bodies get 413.
* ``demo.argon2_time_cost`` (3), ``demo.argon2_memory_cost`` (KiB, 65536),
  ``demo.argon2_parallelism`` (4) -- password hashing cost (lower them in tests).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from pyramid.exceptions import ConfigurationError

from pyramid_examcache.settings import as_number


@dataclass(frozen=True)
class DemoSettings:
    secret: str
    token_ttl: int = 3600
    verify_ttl: int = 86400
    max_body_bytes: int = 65536
    argon2_time_cost: int = 3
    argon2_memory_cost: int = 65536
    argon2_parallelism: int = 4


def parse_demo_settings(settings: Mapping[str, Any]) -> DemoSettings:
    secret = str(settings.get("demo.secret") or "").strip()
    if len(secret) < 16:
        raise ConfigurationError(
            "Invalid setting demo.secret: required, at least 16 characters "
            "(it signs the login tokens; e.g. python -c 'import secrets; print(secrets.token_hex(32))')")
    d = DemoSettings

    def integer(name: str, default: int, minimum: int = 1) -> int:
        return as_number(settings, "demo." + name, default, integer=True, minimum=minimum)

    return DemoSettings(
        secret=secret,
        token_ttl=integer("token_ttl", d.token_ttl),
        verify_ttl=integer("verify_ttl", d.verify_ttl),
        max_body_bytes=integer("max_body_bytes", d.max_body_bytes, minimum=256),
        argon2_time_cost=integer("argon2_time_cost", d.argon2_time_cost),
        argon2_memory_cost=integer("argon2_memory_cost", d.argon2_memory_cost, minimum=8),
        argon2_parallelism=integer("argon2_parallelism", d.argon2_parallelism),
    )


def get_demo_settings(request_or_registry) -> DemoSettings:
    registry = getattr(request_or_registry, "registry", request_or_registry)
    return registry["demo.settings"]
