"""Sentinel and Cluster URLs: parsed into what redis-py needs; malformed ones refused at
start-up with a ConfigurationError naming the setting."""
from __future__ import annotations

import pytest
from pyramid.exceptions import ConfigurationError

from pyramid_examcache.settings import parse_cache_settings, parse_mail_settings
from pyramid_examcache.topology import parse


def test_sentinel_url_with_auth_tls_and_options():
    topo = parse("rediss+sentinel://app:s%40cret@10.0.0.1:26379,[::1]:26380/mymaster/3"
                 "?sentinel_password=sp&ssl_cert_reqs=none")
    assert topo.kind == "sentinel" and topo.service == "mymaster" and topo.db == 3
    assert topo.hosts == (("10.0.0.1", 26379), ("::1", 26380))
    assert topo.connection_kwargs() == {"username": "app", "password": "s@cret", "ssl": True,
                                        "ssl_cert_reqs": "none"}
    assert topo.options["sentinel_password"] == "sp"


def test_cluster_url():
    topo = parse("redis+cluster://h1:7000,h2:7001/")
    assert topo.kind == "cluster" and topo.hosts == (("h1", 7000), ("h2", 7001))
    assert parse("redis://localhost:6379/0").kind == "single"


@pytest.mark.parametrize("url, message", [
    ("redis+sentinel://h1:26379", "service name"),
    ("redis+sentinel://h1:26379/", "service name"),
    ("redis+sentinel://h1/mymaster", "not host:port"),
    ("redis+sentinel://h1:26379,,h2:1/mymaster", "not host:port"),
    ("redis+sentinel://h1:99999/mymaster", "not host:port"),
    ("redis+sentinel://h1:26379/mymaster/x", "must be a number"),
    ("redis+sentinel://h1:26379/mymaster?socket_timeout=1", "unknown option"),
    ("redis+cluster://h1:7000/0", "one database"),
    ("redis+cluster://:7000/", "not host:port"),
    ("redis+cluster:///", "not host:port"),
])
def test_malformed_urls_are_configuration_errors_naming_the_setting(url, message):
    with pytest.raises(ConfigurationError) as cache_error:
        parse_cache_settings({"examcache.redis_url": url})
    assert "examcache.redis_url" in str(cache_error.value) and message in str(cache_error.value)
    if "sentinel" in url:
        with pytest.raises(ConfigurationError) as mail_error:
            parse_mail_settings({"mail.queue_url": url})
        assert "mail.queue_url" in str(mail_error.value) and message in str(mail_error.value)


def test_good_urls_are_accepted():
    url = "redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster/0"
    assert parse_cache_settings({"examcache.redis_url": url}).redis_url == url
    assert parse_mail_settings({"mail.queue_url": url}).queue_url == url
    url = "redis+cluster://127.0.0.1:7000,127.0.0.1:7001/"
    assert parse_cache_settings({"examcache.redis_url": url}).redis_url == url


def test_the_mail_queue_refuses_a_cluster_and_says_why():
    with pytest.raises(ConfigurationError) as error:
        parse_mail_settings({"mail.queue_url": "redis+cluster://127.0.0.1:7000/"})
    assert "mail.queue_url" in str(error.value) and "CROSSSLOT" in str(error.value)
    assert "redis+sentinel://" in str(error.value)


def test_a_cluster_key_prefix_may_not_hold_braces():
    with pytest.raises(ConfigurationError) as error:
        parse_cache_settings({"examcache.redis_url": "redis+cluster://h:7000/",
                              "examcache.key_prefix": "app{1}:"})
    assert "examcache.key_prefix" in str(error.value)
    parse_cache_settings({"examcache.redis_url": "redis://h:6379/0",
                          "examcache.key_prefix": "app{1}:"})
