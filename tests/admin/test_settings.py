"""examcache.admin_* settings: off by default, bad values and missing pieces are
ConfigurationErrors naming what to do."""
from __future__ import annotations

import sys

import pytest
from pyramid.exceptions import ConfigurationError

from pyramid_examcache.admin import DEFAULT_PERMISSION, parse_admin_settings

from .support import ADMIN, admin_app


@pytest.fixture
def sqlite_url(tmp_path):
    from sqlalchemy import create_engine

    from pyramid_examcache.mail.outbox import metadata

    url = f"sqlite:///{tmp_path}/admin.sqlite"
    engine = create_engine(url)
    metadata.create_all(engine)
    engine.dispose()
    return url


def test_off_unless_the_path_is_set(sqlite_url):
    app = admin_app(sqlite_url, **{"examcache.admin_path": ""})
    app.get("/_examcache/", headers=ADMIN, status=404)
    assert not [r for r in app.app.routes_mapper.get_routes() if r.name.startswith("examcache_admin")]


@pytest.mark.parametrize("path,prefix", [("/_examcache/", "/_examcache"), ("/ops", "/ops"),
                                         (" /a/b-c/ ", "/a/b-c")])
def test_good_paths(path, prefix):
    assert parse_admin_settings({"examcache.admin_path": path}).prefix == prefix


def test_another_path_serves_the_page_there(sqlite_url):
    app = admin_app(sqlite_url, **{"examcache.admin_path": "/ops/mail"})
    assert "Mail jobs" in app.get("/ops/mail/", headers=ADMIN).text
    assert app.get("/ops/mail", headers=ADMIN, status=303).location == "http://localhost/ops/mail/"


@pytest.mark.parametrize("path", ["/", "_examcache/", "//x/", "/a//b/", "/a/../b", "/{x}/",
                                  "/a b/", "/x?y", "/*x", "http://x/"])
def test_bad_paths(path):
    with pytest.raises(ConfigurationError, match=r"examcache\.admin_path"):
        parse_admin_settings({"examcache.admin_path": path})


def test_bad_path_at_startup(sqlite_url):
    with pytest.raises(ConfigurationError, match=r"examcache\.admin_path"):
        admin_app(sqlite_url, **{"examcache.admin_path": "/../x"})


def test_permission_and_login_url():
    assert parse_admin_settings({}).permission == DEFAULT_PERMISSION == "examcache.admin"
    assert parse_admin_settings({"examcache.admin_permission": "ops"}).permission == "ops"
    with pytest.raises(ConfigurationError, match=r"examcache\.admin_permission"):
        parse_admin_settings({"examcache.admin_permission": "two words"})
    with pytest.raises(ConfigurationError, match=r"examcache\.admin_login_url"):
        parse_admin_settings({"examcache.admin_login_url": "//evil.example/"})
    assert parse_admin_settings({"examcache.admin_login_url": "/login"}).login_url == "/login"


def test_without_pyramid_jinja2(sqlite_url, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyramid_jinja2", None)  # import fails
    with pytest.raises(ConfigurationError, match=r"pip install pyramid_examcache\[admin\]"):
        admin_app(sqlite_url)
    admin_app(sqlite_url, **{"examcache.admin_path": ""})  # off: not needed


def test_without_a_csrf_storage(sqlite_url):
    with pytest.raises(ConfigurationError, match=r"set_csrf_storage_policy"):
        admin_app(sqlite_url, csrf=False)
