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

import re
from dataclasses import dataclass
from typing import Any, Mapping

from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationError

from ..settings import cache_setting

__all__ = ["AdminSettings", "DEFAULT_PERMISSION", "admin_permission", "includeme",
           "parse_admin_settings"]

DEFAULT_PERMISSION = "examcache.admin"
#: a path of safe characters, segments separated by single slashes
_PATH = re.compile(r"/(?:[A-Za-z0-9._~-]+/)*[A-Za-z0-9._~-]+/?")
_PERMISSION = re.compile(r"[^\s\x00-\x1f\x7f]{1,200}")
#: the settings read here (names checked against pyramid_examcache.settings.CACHE_SETTINGS)
PATH_SETTING = cache_setting("examcache.admin_path")
PERMISSION_SETTING = cache_setting("examcache.admin_permission")
LOGIN_URL_SETTING = cache_setting("examcache.admin_login_url")


@dataclass(frozen=True)
class AdminSettings:
    #: the prefix of the admin routes, without its trailing slash (``/_examcache``); None: off
    prefix: str | None
    permission: str
    login_url: str | None


def _error(name: str, value: Any, allowed: str) -> ConfigurationError:
    return ConfigurationError(f"Invalid setting {name} = {value!r}: {allowed}")


def parse_admin_settings(settings: Mapping[str, Any]) -> AdminSettings:
    """Read ``examcache.admin_path``, ``examcache.admin_permission`` and
    ``examcache.admin_login_url``; a bad value raises ConfigurationError naming it."""
    raw = settings.get(PATH_SETTING)
    path = str(raw).strip() if raw is not None else ""
    prefix = None
    if path:
        segments = path.strip("/").split("/")
        if not _PATH.fullmatch(path) or any(s in (".", "..") for s in segments):
            raise _error(PATH_SETTING, raw,
                         "must be an absolute URL path below the root such as /_examcache/ "
                         "(letters, digits, '.', '_', '~', '-' in segments separated by single "
                         "'/'; no '.' or '..' segment; leave it unset to turn the page off)")
        prefix = path.rstrip("/")
    raw = settings.get(PERMISSION_SETTING)
    permission = str(raw).strip() if raw is not None else ""
    if raw is not None and not _PERMISSION.fullmatch(permission):
        raise _error(PERMISSION_SETTING, raw,
                     "must be a permission name (1-200 characters, no whitespace)")
    raw = settings.get(LOGIN_URL_SETTING)
    login_url = str(raw).strip() if raw is not None else ""
    if login_url and not (login_url.startswith("/") and not login_url.startswith("//")
                          and _PERMISSION.fullmatch(login_url)
                          or re.fullmatch(r"https?://[^\s\x00-\x1f\x7f]+", login_url)):
        raise _error(LOGIN_URL_SETTING, raw,
                     "must be a path on this site (/login) or an http(s) URL, without spaces")
    return AdminSettings(prefix, permission or DEFAULT_PERMISSION, login_url or None)


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
