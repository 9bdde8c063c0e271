"""The admin page: mail jobs (list, filter, search, detail, retry, cancel) and the cache
(counters, invalidate a key or a tag), server-rendered HTML behind a Pyramid permission.

``config.include('pyramid_examcache')`` includes it when ``examcache.admin_path`` is set::

    examcache.admin_path = /_examcache/
    examcache.admin_permission = examcache.admin     # the default
    examcache.admin_login_url = /login               # optional: where anonymous browsers go

The application grants the permission in its security policy (``permits``, e.g. an ACL
entry ``(Allow, 'role:admin', 'examcache.admin')`` on its root factory) and chooses the
CSRF storage policy (a session factory, or ``config.set_csrf_storage_policy(
CookieCSRFStoragePolicy(...))``): every form is a POST checked by Pyramid's CSRF machinery
(``require_csrf=True``). Templates are Jinja2, rendered through pyramid_jinja2 with an
environment of their own (autoescape on, whatever the application's ``jinja2.*`` say):
``pip install pyramid_examcache[admin]``.

The page only reads the add-on's public parts: the outbox table
(:mod:`pyramid_examcache.mail.outbox`), ``request.mailer``'s ``retry``/``cancel`` and
``request.cache``'s ``stats``/``invalidate``.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationError

from ..settings import DEFAULT_PERMISSION, AdminSettings, cache_setting, parse_admin_settings

__all__ = ["AdminSettings", "DEFAULT_PERMISSION", "admin_permission", "includeme",
           "parse_admin_settings"]

#: the settings of the admin page (parsed by pyramid_examcache.settings)
PATH_SETTING = cache_setting("examcache.admin_path")
PERMISSION_SETTING = cache_setting("examcache.admin_permission")
LOGIN_URL_SETTING = cache_setting("examcache.admin_login_url")


def admin_permission(settings: Mapping[str, Any]) -> str:
    """The permission the admin views require (``examcache.admin_permission``): what the
    application's security policy grants to its administrators."""
    return parse_admin_settings(settings).permission


def includeme(config: Configurator) -> None:
    """Add the admin routes and views under ``examcache.admin_path`` (nothing if unset)."""
    settings = parse_admin_settings(config.get_settings())
    if settings.prefix is None:
        return
    try:
        import pyramid_jinja2  # noqa: F401
    except ImportError:
        raise ConfigurationError(
            "examcache.admin_path is set but pyramid_jinja2 is not installed: the admin page "
            "renders Jinja2 templates; pip install pyramid_examcache[admin]") from None
    from .views import add_admin_views

    add_admin_views(config, settings)
