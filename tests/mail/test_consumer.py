"""The examcache-consumer command: settings from the ini, errors, consumer wiring."""
from __future__ import annotations

import subprocess

import pytest

from pyramid_examcache.mail.queue import MailQueue
from pyramid_examcache.scripts.consumer import main, make_consumer, read_settings
from pyramid_examcache.settings import parse_mail_settings

from .support import consumer_command, write_ini


@pytest.fixture(autouse=True)
def keep_test_logging(monkeypatch):
    """main() would point the logging config at a captured stderr that pytest closes."""
    monkeypatch.setattr("pyramid_examcache.scripts.consumer.plaster.setup_logging", lambda uri: None)


def test_help_explains_the_command():
    out = subprocess.run(consumer_command("--help"), capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    assert "config_uri" in out.stdout and "mail.outbox_url" in out.stdout
    assert "SIGTERM" in out.stdout


def test_settings_are_read_without_loading_the_app(tmp_path):
    ini = write_ini(str(tmp_path / "x.ini"), {"mail.queue_url": "sqlite:///q.sqlite",
                                              "sqlalchemy.url": "sqlite:///db.sqlite"})
    settings = read_settings(ini)
    assert settings["mail.queue_url"] == "sqlite:///q.sqlite"
    assert settings["here"] == str(tmp_path)
    assert parse_mail_settings(settings).queue_url == f"sqlite:///{tmp_path}/q.sqlite"


def test_missing_database_is_a_configuration_error(tmp_path, capsys):
    ini = write_ini(str(tmp_path / "x.ini"), {"mail.queue_url": "sqlite:///q.sqlite"})
    assert main([ini]) == 2
    assert "mail.outbox_url" in capsys.readouterr().err


def test_bad_setting_is_reported_by_name(tmp_path, capsys):
    ini = write_ini(str(tmp_path / "x.ini"), {"mail.retries": "many"})
    assert main([ini]) == 2
    assert "mail.retries" in capsys.readouterr().err


def test_memory_queue_is_refused(tmp_path, capsys):
    ini = write_ini(str(tmp_path / "x.ini"), {"mail.queue_url": "memory://",
                                              "sqlalchemy.url": "sqlite://"})
    assert main([ini]) == 2
    assert "memory://" in capsys.readouterr().err


def test_consumer_wiring(tmp_path):
    settings = parse_mail_settings({"mail.queue_url": f"sqlite:///{tmp_path}/q.sqlite",
                                    "mail.workers": "3", "mail.relay_interval": "7"})
    queue = MailQueue(settings, consumer=True)
    consumer = make_consumer(queue, settings)
    assert len(consumer.worker_threads) == 3
    assert consumer.scheduler_class.periodic_task_seconds == 7
    # SIGTERM/SIGINT are graceful: tests/mail/test_e2e.py sends them to a real consumer
