"""Misspelled setting names are never ignored (issue 18, finding 7).

An unknown ``examcache.*`` name is a ConfigurationError naming it and the closest valid
name; an unknown ``mail.*`` name (a prefix shared with pyramid_mailer) is a WARNING of the
``pyramid_examcache.settings`` logger, once per name per process, with the same
suggestion. Checked where ``includeme`` and ``examcache-consumer`` parse the settings.
"""
from __future__ import annotations

import inspect
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pyramid.config import Configurator
from pyramid.csrf import CookieCSRFStoragePolicy
from pyramid.exceptions import ConfigurationError

from pyramid_examcache.cache import get_policy
from pyramid_examcache.scripts.consumer import read_settings
from pyramid_examcache.settings import (CACHE_SETTINGS, MAIL_SETTINGS, PYRAMID_MAILER_SETTINGS,
                                        cache_setting, parse_cache_settings, parse_mail_settings)

from .conftest import REDIS_URL

ROOT = Path(__file__).resolve().parents[1]
LOGGER = "pyramid_examcache.settings"


def base_settings(tmp_path: Path) -> dict[str, str]:
    return {"examcache.redis_url": "memory://",
            "mail.queue_url": f"sqlite:///{tmp_path}/huey.sqlite",
            "mail.file_dir": str(tmp_path / "mail")}


def include(settings: dict[str, str]) -> Configurator:
    """``config.include('pyramid_examcache')`` and commit, as an application does."""
    config = Configurator(settings=settings)
    config.set_csrf_storage_policy(CookieCSRFStoragePolicy())  # the admin page's forms
    config.include("pyramid_tm")
    config.include("pyramid_examcache")
    config.commit()
    return config


def name_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == LOGGER and r.levelno >= logging.WARNING]


@pytest.mark.parametrize("typo, valid", [("examcache.redis-url", "examcache.redis_url"),
                                         ("examcache.default_tll", "examcache.default_ttl")])
def test_a_misspelled_examcache_name_is_refused_with_the_closest_name(tmp_path, typo, valid):
    settings = {**base_settings(tmp_path), typo: "redis://127.0.0.1:6379/0"}
    del settings["examcache.redis_url"]  # the typo would have fallen back to memory://
    with pytest.raises(ConfigurationError) as raised:
        include(settings)
    assert f"Unknown setting {typo}; did you mean {valid}?" in str(raised.value)


def test_an_unknown_examcache_name_with_nothing_close_lists_the_valid_names(tmp_path):
    with pytest.raises(ConfigurationError) as raised:
        include({**base_settings(tmp_path), "examcache.zzz": "1"})
    message = str(raised.value)
    assert "Unknown setting examcache.zzz" in message
    assert all(name in message for name in CACHE_SETTINGS)


def test_a_misspelled_mail_name_is_warned_about_once_with_the_closest_name(tmp_path, caplog):
    settings = {**base_settings(tmp_path), "mail.queueurl": "redis://127.0.0.1:6379/1"}
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        include(settings)
        include(settings)  # a second app in the same process: not warned again
    [message] = name_warnings(caplog)
    assert "Unknown setting mail.queueurl; did you mean mail.queue_url?" in message


def test_pyramid_mailers_own_names_are_accepted_silently(tmp_path, caplog):
    settings = {**base_settings(tmp_path), "mail.keyfile": "/k.pem", "mail.certfile": "/c.pem",
                "mail.queue_path": "/var/spool/mail", "mail.debug": "0",
                "mail.sendmail_app": "/usr/sbin/sendmail",
                "mail.sendmail_template": "{sendmail_app}",
                "mail.top_level_directory": str(tmp_path)}
    assert {k for k in settings if k.startswith("mail.")} - {"mail.queue_url", "mail.file_dir"} \
        <= PYRAMID_MAILER_SETTINGS
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        include(settings)
    assert name_warnings(caplog) == []


def test_the_names_accepted_as_pyramid_mailers_are_read_by_the_installed_pyramid_mailer():
    import pyramid_mailer.mailer

    source = inspect.getsource(pyramid_mailer.mailer)
    for name in PYRAMID_MAILER_SETTINGS:
        short = name.removeprefix("mail.")
        assert f"'{short}'" in source or f"prefix+'{short}'" in source, name


def test_a_full_set_of_valid_names_is_accepted_without_warning(tmp_path, caplog,
                                                               redis_prefix):
    """Every name of the table, with a valid value, through the real includeme (on one
    Redis: the near cache's settings all take effect only there)."""
    values = {
        "examcache.redis_url": REDIS_URL, "examcache.key_prefix": redis_prefix,
        "examcache.default_ttl": "60", "examcache.socket_timeout": "0.5",
        "examcache.lock_timeout": "2", "examcache.wait_timeout": "2",
        "examcache.breaker_threshold": "3", "examcache.breaker_reset": "1",
        "examcache.near_cache": "lease", "examcache.near_cache_mb": "1",
        "examcache.lease_ms": "1000", "examcache.early_hits": "true",
        "examcache.enabled": "true", "examcache.max_value_bytes": "1000",
        "examcache.require_registration": "false", "examcache.invalidation_log": "false",
        "examcache.invalidation_log_url": f"sqlite:///{tmp_path}/log.sqlite",
        "examcache.relay_interval": "1", "examcache.relay_after": "2",
        "examcache.admin_path": "/_examcache/", "examcache.admin_permission": "examcache.admin",
        "examcache.admin_login_url": "/login", "examcache.metrics_path": "/metrics",
        "mail.host": "localhost", "mail.port": "2525", "mail.username": "", "mail.password": "",
        "mail.tls": "false", "mail.ssl": "false", "mail.timeout": "5",
        "mail.default_sender": "no-reply@example.com", "mail.transport": "file",
        "mail.file_dir": str(tmp_path / "mail"), "mail.queue_url": f"sqlite:///{tmp_path}/q.sqlite",
        "mail.queue_name": "names-test", "mail.retries": "3", "mail.retry_delay": "2",
        "mail.retry_backoff": "2", "mail.max_retry_delay": "600", "mail.max_age": "86400",
        "mail.smtputf8": "false", "mail.allow_plaintext_auth": "false",
        "mail.smtp_max_messages_per_connection": "100",
        "mail.rate_limit": "14/s, 50000/d", "mail.domain_rate_limits": "gmail.com=20/s",
        "mail.keep_completed": "3600", "mail.keep_failed": "604800", "mail.workers": "2",
        "mail.idempotency_window": "86400", "mail.default_priority": "normal",
        "mail.relay_interval": "60", "mail.session_attr": "dbsession",
        "mail.request_attr": "mailer", "mail.max_message_bytes": "1000000",
        "mail.outbox_url": f"sqlite:///{tmp_path}/outbox.sqlite", "mail.lease": "120",
        "mail.requeue_after": "900", "mail.queue_timeout": "2", "mail.shutdown_timeout": "30",
    }
    assert set(values) == CACHE_SETTINGS | MAIL_SETTINGS  # the whole table, nothing else
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        config = include(values)
    get_policy(config.registry).close()
    assert name_warnings(caplog) == []
    assert parse_cache_settings(values).require_registration is False


@pytest.mark.parametrize("ini", ["development.ini", "production.ini"])
def test_the_projects_ini_files_use_only_known_names(ini, caplog):
    settings = read_settings(str(ROOT / ini))
    assert any(k.startswith("examcache.") for k in settings)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        parse_cache_settings(settings)
        parse_mail_settings(settings)
    assert name_warnings(caplog) == []


def test_development_ini_requires_registration():
    assert parse_cache_settings(read_settings(str(ROOT / "development.ini"))).require_registration


def test_the_package_reads_only_names_of_the_table():
    """admin/ and metrics/ name their settings through cache_setting(), which refuses a
    name missing from the table: a setting read but refused at start-up cannot exist."""
    from pyramid_examcache import admin, metrics

    assert {admin.PATH_SETTING, admin.PERMISSION_SETTING, admin.LOGIN_URL_SETTING,
            metrics.PATH_SETTING} <= CACHE_SETTINGS
    with pytest.raises(LookupError, match="examcache.metrics-path"):
        cache_setting("examcache.metrics-path")


def consumer_script() -> str:
    script = Path(sys.executable).parent / "examcache-consumer"
    assert script.exists(), f"{script}: the console script is installed with the package"
    return str(script)


def test_the_consumer_refuses_an_ini_with_a_misspelled_name(tmp_path):
    ini = tmp_path / "typo.ini"
    ini.write_text(textwrap.dedent(f"""\
        [app:main]
        use = egg:examcache_demo
        examcache.redis-url = redis://127.0.0.1:6379/0
        mail.queueurl = redis://127.0.0.1:6379/1
        mail.queue_url = sqlite:///{tmp_path}/huey.sqlite
        sqlalchemy.url = sqlite:///{tmp_path}/app.sqlite
        """))
    out = subprocess.run([consumer_script(), str(ini)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode != 0
    assert ("Unknown setting examcache.redis-url; did you mean examcache.redis_url?"
            in out.stderr), out.stderr
    assert "Unknown setting mail.queueurl; did you mean mail.queue_url?" in out.stderr
