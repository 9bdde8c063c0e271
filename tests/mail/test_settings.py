"""mail.* settings: explicit conversion, ConfigurationError naming the setting."""
from __future__ import annotations

import pytest
from pyramid.exceptions import ConfigurationError

from pyramid_examcache.settings import parse_mail_settings


def test_defaults():
    s = parse_mail_settings({})
    assert (s.retries, s.retry_delay, s.retry_backoff) == (3, 2.0, 2.0)
    assert (s.keep_completed, s.keep_failed) == (3600, 604800)
    assert s.transport == "file" and s.session_attr == "dbsession"
    assert s.outbox_url is None and s.port == 25


def test_values_are_converted_explicitly(tmp_path):
    s = parse_mail_settings({
        "here": str(tmp_path), "mail.host": " smtp.example.com ", "mail.port": "2525",
        "mail.tls": "true", "mail.username": "u", "mail.password": "p",
        "mail.transport": "smtp", "mail.queue_url": "sqlite:///var/q.sqlite",
        "mail.retries": "5", "mail.retry_delay": "0.5", "mail.retry_backoff": "3",
        "mail.keep_completed": "10", "mail.keep_failed": "20", "mail.workers": "4",
        "mail.file_dir": "mails", "mail.lease": "30", "mail.requeue_after": "60",
        "sqlalchemy.url": "postgresql+psycopg://u@h/db",
    })
    assert s.host == "smtp.example.com" and s.port == 2525 and s.tls and not s.ssl
    assert (s.retries, s.retry_delay, s.retry_backoff, s.workers) == (5, 0.5, 3.0, 4)
    assert s.queue_url == f"sqlite:///{tmp_path}/var/q.sqlite"
    assert s.file_dir == str(tmp_path / "mails")
    assert s.outbox_url == "postgresql+psycopg://u@h/db"
    assert (s.lease, s.requeue_after) == (30.0, 60)


def test_outbox_url_overrides_sqlalchemy_url():
    s = parse_mail_settings({"sqlalchemy.url": "sqlite://", "mail.outbox_url": "postgresql://h/x"})
    assert s.outbox_url == "postgresql://h/x"


def test_port_follows_tls_and_ssl():
    assert parse_mail_settings({"mail.ssl": "yes"}).port == 465
    assert parse_mail_settings({"mail.tls": "on"}).port == 587


@pytest.mark.parametrize("name, value", [
    ("mail.transport", "pigeon"),
    ("mail.port", "0"),
    ("mail.port", "70000"),
    ("mail.port", "smtp"),
    ("mail.tls", "maybe"),
    ("mail.retries", "-1"),
    ("mail.retries", "three"),
    ("mail.retry_delay", "soon"),
    ("mail.retry_backoff", "0.5"),
    ("mail.keep_completed", "1.5"),
    ("mail.workers", "0"),
    ("mail.relay_interval", "0"),
    ("mail.queue_url", "amqp://broker"),
    ("mail.queue_url", "redis:///0"),
    ("mail.queue_url", "sqlite:///"),
    ("mail.session_attr", "db session"),
    ("mail.default_sender", "nobody"),
    ("mail.lease", "0"),
    ("mail.outbox_url", "not a url"),
    ("mail.queue_timeout", "-2"),
])
def test_bad_values_name_the_setting(name, value):
    with pytest.raises(ConfigurationError) as info:
        parse_mail_settings({name: value})
    assert name in str(info.value)
    assert value in str(info.value)


def test_tls_and_ssl_are_exclusive():
    with pytest.raises(ConfigurationError, match="mail.tls"):
        parse_mail_settings({"mail.tls": "true", "mail.ssl": "true"})


def test_include_rejects_bad_settings_at_startup():
    from pyramid.config import Configurator

    config = Configurator(settings={"mail.retries": "lots"})
    with pytest.raises(ConfigurationError, match="mail.retries"):
        config.include("pyramid_examcache.mail")
