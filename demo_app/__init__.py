"""demo_app: an exam platform wired to pyramid_examcache.

``main`` is the paste ``app_factory`` (``use = egg:examcache_demo`` in the
.ini files); :func:`make_config` builds the same configuration without
committing it, so tests can add test-only tweens or views before
``make_wsgi_app()``.
"""
from __future__ import annotations

import os

from pyramid.config import Configurator
from pyramid.renderers import JSON
from pyramid.tweens import INGRESS

from .headers import EARLY_HITS_TWEEN
from .settings import parse_demo_settings


def ensure_sqlite_dir(url: str | None) -> None:
    """Create the directory of a ``sqlite:///path`` file (SQLite will not)."""
    if url and url.startswith("sqlite") and ":///" in url:
        path = url.split(":///", 1)[1].split("?", 1)[0]
        directory = os.path.dirname(path)
        if path and path != ":memory:" and directory:
            os.makedirs(directory, exist_ok=True)


def make_config(settings: dict) -> Configurator:
    """The application's configuration (not yet committed)."""
    demo = parse_demo_settings(settings)
    ensure_sqlite_dir(settings.get("sqlalchemy.url"))
    ensure_sqlite_dir(settings.get("mail.queue_url"))
    config = Configurator(settings=settings)
    config.registry["demo.settings"] = demo

    from .security import (
        BearerTokenSecurityPolicy,
        HashSlots,
        SignedCSRFStoragePolicy,
        make_password_hasher,
    )

    config.registry["demo.password_hasher"] = make_password_hasher(demo)
    config.registry["demo.hash_slots"] = HashSlots(demo.hash_slots, demo.hash_wait)
    # bearer tokens for the API; the same token in the HTML login's cookie for the pages
    # (the add-on's admin page, whose permission is_admin users hold)
    from pyramid_examcache.admin import admin_permission

    secure = demo.public_url.startswith("https://")
    config.set_security_policy(BearerTokenSecurityPolicy(
        demo.secret, admin_permission(settings), token_ttl=demo.token_ttl, secure_cookie=secure))
    # no sessions here: CSRF tokens signed with demo.secret, bound to a signed visitor id
    # (the demo_csrf cookie) and the login, plus an Origin check (require_csrf=True views)
    config.set_csrf_storage_policy(SignedCSRFStoragePolicy(demo.secret, demo.public_url,
                                                           secure=secure))

    config.add_renderer("json", JSON(separators=(",", ":")))  # compact, like the errors
    config.include("pyramid_jinja2")  # .jinja2 templates: the mails (templates/mail/)
    config.include(".models")  # pyramid_tm, request.dbsession
    config.include("pyramid_examcache")  # request.cache, cache= views, ORM hook, request.mailer
    config.include(".routes")
    config.include(".docs")  # /docs/: the built Sphinx site, if demo.docs_dir has one
    config.include(".headers")  # Cache-Control: private / Vary: Authorization, after the cache
    config.include(".access")  # /metrics only for demo.metrics_allow (404 for others)

    from .throttle import make_throttle

    config.registry["demo.throttle"] = make_throttle(settings)
    # under the early-hit tween where there is one (nothing may run before it for the
    # WSGI fast path, and an early hit is a GET whose body is never read)
    config.add_tween("demo_app.tweens.body_limit_tween_factory",
                     under=(EARLY_HITS_TWEEN, INGRESS))
    config.scan(".views")
    return config


def main(global_config, **settings):
    """Return the demo's WSGI application (paste ``app_factory``): its router, behind
    pyramid_examcache's WSGI fast path where the settings turn early hits on
    (production.ini: ``examcache.near_cache = lease``)."""
    from pyramid_examcache import fast_path

    return fast_path(make_config(settings).make_wsgi_app(), optional=True)
