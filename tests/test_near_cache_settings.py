"""``examcache.near_cache`` (off, check, barrier, lease) and its companions: defaults per
topology as each behaved before, explicit values that cannot take effect refused naming
both settings, and the old names (``examcache.tracking``, ``examcache.tracking_lease_ms``)
mapped onto the new ones with one DeprecationWarning each."""
from __future__ import annotations

import warnings

import pytest
from pyramid.exceptions import ConfigurationError

from pyramid_examcache.cache.backends import make_backend
from pyramid_examcache.settings import (CACHE_SETTINGS, CACHE_TABLE, DEPRECATED_SETTINGS,
                                        MAIL_TABLE, parse_cache_settings)

from .conftest import REDIS_URL

ONE = "redis://127.0.0.1:6379/0"
SENTINEL = "redis+sentinel://127.0.0.1:26379/mymaster/0"
CLUSTER = "redis+cluster://127.0.0.1:7000/"
MEMORY = "memory://"


def near(settings: dict[str, str]) -> tuple:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        s = parse_cache_settings(settings)
    return s.near_cache, s.near_cache_mb, s.lease_ms, s.early_hits


def refused(settings: dict[str, str], *names: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(ConfigurationError) as raised:
            parse_cache_settings(settings)
    message = str(raised.value)
    for name in names:
        assert f"{name} = " in message, message
    return message


@pytest.mark.parametrize("url, expected", [
    (ONE, ("barrier", 32.0, 0, True)),       # tracked near cache, a barrier per read (early
    (SENTINEL, ("barrier", 32.0, 0, True)),  # hits too, after it); tracked, fenced (fenced_near)
    (CLUSTER, ("barrier", 32.0, 0, True)),    # one stream per primary
    (MEMORY, ("off", 0.0, 1000, True)),        # no near cache; memory:// hits early
])
def test_defaults_follow_the_topology(url, expected):
    assert near({"examcache.redis_url": url}) == expected


def test_without_a_near_cache_the_mode_is_off():
    for url in (ONE, SENTINEL, CLUSTER):
        mode, size, _, early = near({"examcache.redis_url": url, "examcache.near_cache_mb": "0"})
        assert (mode, size, early) == ("off", 0.0, False)


@pytest.mark.parametrize("mode, lease_ms, early", [("off", 1000, False), ("check", 1000, False),
                                                   ("barrier", 0, True), ("lease", 1000, True)])
def test_each_mode_on_one_redis(mode, lease_ms, early):
    assert near({"examcache.redis_url": ONE, "examcache.near_cache": mode})[1:] == (
        0.0 if mode == "off" else 32.0, lease_ms, early)


def test_lease_ms_and_early_hits_given():
    assert near({"examcache.redis_url": ONE, "examcache.near_cache": "lease",
                 "examcache.lease_ms": "250"}) == ("lease", 32.0, 250, True)
    # read leases are opt-in: a lease length alone would change nothing (the default mode
    # has none), so it is refused naming the mode
    refused({"examcache.redis_url": ONE, "examcache.lease_ms": "250"},
            "examcache.lease_ms", "examcache.near_cache")
    # a process without leases of its own still waits for the others' (the writer side)
    assert near({"examcache.redis_url": ONE, "examcache.near_cache": "check",
                 "examcache.lease_ms": "5000"})[2] == 5000
    assert near({"examcache.redis_url": ONE, "examcache.near_cache": "lease",
                 "examcache.early_hits": "false"})[3] is False
    assert near({"examcache.redis_url": MEMORY, "examcache.early_hits": "true"})[3] is True
    # barrier: early hits after the barrier, on every topology (or off, explicitly)
    for url in (ONE, SENTINEL, CLUSTER):
        assert near({"examcache.redis_url": url, "examcache.early_hits": "true"})[3] is True
        assert near({"examcache.redis_url": url, "examcache.early_hits": "false"})[3] is False


@pytest.mark.parametrize("value", ["0", "199", "60001", "x", "1.5"])
def test_a_bad_lease_ms_names_itself(value):
    message = refused({"examcache.redis_url": ONE, "examcache.lease_ms": value},
                      "examcache.lease_ms")
    assert "must be" in message


def test_an_unknown_mode_lists_the_modes():
    message = refused({"examcache.near_cache": "fast"}, "examcache.near_cache")
    assert "off, check, barrier, lease" in message


@pytest.mark.parametrize("settings, first, second", [
    ({"examcache.redis_url": CLUSTER, "examcache.near_cache": "lease"},
     "examcache.near_cache", "examcache.redis_url"),
    ({"examcache.redis_url": SENTINEL, "examcache.near_cache": "lease"},
     "examcache.near_cache", "examcache.redis_url"),
    ({"examcache.redis_url": MEMORY, "examcache.near_cache": "check"},
     "examcache.near_cache", "examcache.redis_url"),
    ({"examcache.redis_url": MEMORY, "examcache.near_cache_mb": "8"},
     "examcache.near_cache_mb", "examcache.redis_url"),
    ({"examcache.redis_url": SENTINEL, "examcache.lease_ms": "1000"},
     "examcache.lease_ms", "examcache.redis_url"),
    ({"examcache.redis_url": MEMORY, "examcache.lease_ms": "1000"},
     "examcache.lease_ms", "examcache.redis_url"),
    ({"examcache.redis_url": ONE, "examcache.near_cache": "off",
      "examcache.early_hits": "true"}, "examcache.early_hits", "examcache.near_cache"),
    ({"examcache.redis_url": ONE, "examcache.near_cache": "check",
      "examcache.early_hits": "true"}, "examcache.early_hits", "examcache.near_cache"),
    ({"examcache.redis_url": CLUSTER, "examcache.near_cache": "check",
      "examcache.early_hits": "true"}, "examcache.early_hits", "examcache.near_cache"),
    ({"examcache.redis_url": ONE, "examcache.near_cache": "barrier",
      "examcache.lease_ms": "1000"}, "examcache.lease_ms", "examcache.near_cache"),
    ({"examcache.redis_url": ONE, "examcache.near_cache": "lease",
      "examcache.near_cache_mb": "0"}, "examcache.near_cache", "examcache.near_cache_mb"),
    ({"examcache.redis_url": ONE, "examcache.near_cache": "off",
      "examcache.near_cache_mb": "16"}, "examcache.near_cache", "examcache.near_cache_mb"),
])
def test_an_explicit_value_that_cannot_take_effect_names_both_settings(settings, first, second):
    refused(settings, first, second)


# -- the old names -----------------------------------------------------------------------------

@pytest.mark.parametrize("old, new", [
    ({"examcache.tracking": "true"}, {"examcache.near_cache": "lease"}),  # what it meant
    ({"examcache.tracking": "false"}, {"examcache.near_cache": "check"}),
    ({"examcache.tracking_lease_ms": "0"}, {"examcache.near_cache": "barrier"}),
    ({"examcache.tracking_lease_ms": "300"},
     {"examcache.near_cache": "lease", "examcache.lease_ms": "300"}),
    ({"examcache.tracking": "false", "examcache.tracking_lease_ms": "2000"},
     {"examcache.near_cache": "check", "examcache.lease_ms": "2000"}),
    ({"examcache.tracking": "true", "examcache.near_cache_mb": "0"}, None),
])
def test_old_names_map_onto_the_new_ones(old, new):
    base = {"examcache.redis_url": ONE}
    if new is None:  # tracking asked for where it could not be: refused, naming both
        refused({**base, **old}, "examcache.tracking", "examcache.near_cache_mb")
        return
    with pytest.warns(DeprecationWarning) as caught:
        mapped = parse_cache_settings({**base, **old})
    assert sorted(str(w.message).split(" ")[0] for w in caught) == sorted(old)  # one each
    for name in old:
        assert DEPRECATED_SETTINGS[name] in str([w.message for w in caught])
    expected = parse_cache_settings({**base, **new})
    assert (mapped.near_cache, mapped.near_cache_mb, mapped.lease_ms, mapped.early_hits) == (
        expected.near_cache, expected.near_cache_mb, expected.lease_ms, expected.early_hits)
    assert mapped.tracking == (mapped.near_cache in ("barrier", "lease"))
    assert mapped.tracking_lease_ms == mapped.lease_ms


@pytest.mark.parametrize("url", [SENTINEL, CLUSTER])
def test_barrier_and_check_are_accepted_on_sentinel_and_cluster(url):
    assert near({"examcache.redis_url": url, "examcache.near_cache": "barrier"}) == (
        "barrier", 32.0, 0, True)
    assert near({"examcache.redis_url": url, "examcache.near_cache": "check"})[0] == "check"
    message = refused({"examcache.redis_url": url, "examcache.near_cache": "lease"},
                      "examcache.near_cache", "examcache.redis_url")
    assert "use barrier, check or off" in message


def test_tracking_off_and_leases_off_keeps_the_writer_off():
    assert near({"examcache.redis_url": ONE, "examcache.tracking": "false",
                 "examcache.tracking_lease_ms": "0"}) == ("check", 32.0, 0, False)


def test_old_tracking_where_it_never_applied_is_refused():
    # before: an INFO log and no tracking; now the combination is an error naming both
    for url in (SENTINEL, CLUSTER, MEMORY):
        refused({"examcache.redis_url": url, "examcache.tracking": "true"},
                "examcache.tracking", "examcache.redis_url")
    # tracking = false where there is nothing to track stays accepted
    assert near({"examcache.redis_url": MEMORY, "examcache.tracking": "false"})[0] == "off"
    assert near({"examcache.redis_url": SENTINEL, "examcache.tracking": "false"})[0] == "check"


@pytest.mark.parametrize("old, new", [("examcache.tracking", "examcache.near_cache"),
                                      ("examcache.tracking_lease_ms", "examcache.lease_ms")])
def test_an_old_name_with_its_new_name_is_refused(old, new):
    values = {"examcache.tracking": "true", "examcache.near_cache": "lease",
              "examcache.tracking_lease_ms": "500", "examcache.lease_ms": "500"}
    refused({"examcache.redis_url": ONE, old: values[old], new: values[new]}, old, new)


def test_lease_with_leases_turned_off_by_the_old_name_is_refused():
    refused({"examcache.redis_url": ONE, "examcache.near_cache": "lease",
             "examcache.tracking_lease_ms": "0"},
            "examcache.near_cache", "examcache.tracking_lease_ms")


def test_old_names_are_accepted_but_not_listed():
    assert set(DEPRECATED_SETTINGS) & CACHE_SETTINGS == set()
    assert set(DEPRECATED_SETTINGS.values()) <= CACHE_SETTINGS


def test_every_row_of_the_table_has_a_converter_default_and_help():
    for spec in (*CACHE_TABLE, *MAIL_TABLE):
        assert callable(spec.convert) and spec.help, spec.name


# -- what the backend is built with ------------------------------------------------------------

@pytest.mark.parametrize("mode, tracked, leased", [("off", False, False),
                                                   ("check", False, False),
                                                   ("barrier", True, False),
                                                   ("lease", True, True)])
def test_the_backend_is_built_from_the_mode(mode, tracked, leased, redis_prefix):
    settings = parse_cache_settings({"examcache.redis_url": REDIS_URL,
                                     "examcache.key_prefix": redis_prefix,
                                     "examcache.near_cache": mode})
    backend = make_backend(settings)
    try:
        assert (backend._tracked is not None) is tracked
        assert (backend._lease is not None) is leased
        assert getattr(backend, "near_mode", mode) == mode
        # every single-Redis writer waits for leases unless leases are off (barrier)
        assert (backend._writer is not None) is (mode != "barrier")
    finally:
        backend.close()
