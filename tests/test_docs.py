"""The Sphinx site (docs/) builds without a warning (issue 13, item 6): narrative pages
included from the README and the API reference from the docstrings; the furo theme, types
shown as types, the tutorial, the how-tos, the changelog and the screenshots (issue 23)."""
from __future__ import annotations

import importlib
import pathlib
import re
import subprocess
import sys

import pytest

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"


#: modules whose ``__all__`` is the supported API (docs/api.rst documents names from them)
PUBLIC_MODULES = ("pyramid_examcache", "pyramid_examcache.cache", "pyramid_examcache.mail",
                  "pyramid_examcache.mail.events", "pyramid_examcache.testing",
                  "pyramid_examcache.pshell")
#: names of modules without an ``__all__`` that the docs tell applications to import
ALSO_PUBLIC = {"pyramid_examcache.cache.codec.NotJSONValue",
               "pyramid_examcache.cache.orm.UnregisteredSession",
               "pyramid_examcache.cache.invalidation_log.create_invalidation_log",
               "pyramid_examcache.cache.invalidation_log.drop_invalidation_log"}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> pathlib.Path:
    """The site, built once with warnings as errors; its directory."""
    out = tmp_path_factory.mktemp("docs")
    result = subprocess.run([sys.executable, "-m", "sphinx", "-W", "-E", "-q", "-b", "html",
                             str(DOCS), str(out / "html")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.slow
def test_sphinx_builds_with_warnings_as_errors(built):
    api = (built / "html" / "api.html").read_text()
    assert 'id="pyramid_examcache.mail.Mailer.send_queued"' in api
    assert 'id="pyramid_examcache.register"' in api  # the public name (the internals page
    internals = (built / "html" / "internals.html").read_text()  # has every module)
    assert "pyramid_examcache.cache.orm" in internals and "register" in internals
    assert "Coming from pyramid_mailer" in (built / "html" / "mailer.html").read_text()
    # the configuration reference is generated from the parser's tables: every setting is on it
    from pyramid_examcache.settings import CACHE_TABLE, DEPRECATED_TABLE, MAIL_TABLE

    reference = (built / "html" / "configuration.html").read_text()
    missing = [s.name for s in (*CACHE_TABLE, *MAIL_TABLE, *DEPRECATED_TABLE)
               if f'<span class="pre">{s.name}</span>' not in reference]
    assert missing == []
    quickstart = (built / "html" / "quickstart.html").read_text()
    assert "second terminal" in quickstart and "examcache-consumer" in quickstart
    html = built / "html"
    assert (html / "_static" / "styles" / "furo.css").exists()  # the theme
    # types as types (not the quoted strings of `from __future__ import annotations`)
    assert "<strong>session</strong> (<em>Session</em>)" in api
    assert "(<em>Iterable</em><em>[</em><em>str</em><em>]</em>)" in api
    assert "&#39;Session&#39;" not in api and "&quot;str" not in api
    # the tutorial shows the tested files (docs/tutorial/, run by tests/test_tutorial.py)
    tutorial = (html / "tutorial.html").read_text()
    for code in ("pyramid_examcache.register", "create_invalidation_log", "send_queued",
                 "cache_public"):
        assert code in tutorial, code
    for page in ("sentinel-cluster", "operations", "upgrading", "testing"):
        assert (html / "howto" / f"{page}.html").exists(), page
    assert "get_mail_capture" in (html / "howto" / "testing.html").read_text()
    assert "0.2.0" in (html / "changes.html").read_text()
    assert (html / "design" / "guarantees.html").exists()
    assert (html / "_images" / "admin.png").exists() and (html / "_images" / "landing.png").exists()


def public_names() -> set[str]:
    names = set(ALSO_PUBLIC)
    for module in PUBLIC_MODULES:
        names |= {f"{module}.{name}" for name in importlib.import_module(module).__all__}
    return names


def unsupported_entries(entries: list[str], public: set[str]) -> list[str]:
    """The API page's entries that are not a supported name: neither a name of
    :data:`public_names` nor a public member (no leading ``_``) of an entry that is."""
    problems = []
    for entry in entries:
        parent, _, leaf = entry.rpartition(".")
        if entry not in public and not (parent in entries and parent in public
                                        and not leaf.startswith("_")):
            problems.append(entry)
    return problems


@pytest.mark.slow
def test_the_api_reference_lists_the_public_names_only(built):
    """Every entry of api.html is a name an application imports (``pyramid_examcache.register``,
    not ``pyramid_examcache.cache.orm.register``) or a method of one; every name the package
    exports at its top is there."""
    import pyramid_examcache

    api = (built / "html" / "api.html").read_text()
    entries = re.findall(r'<dt class="sig sig-object py" id="([^"]+)"', api)
    assert len(entries) == len(set(entries)) and len(entries) >= 30, entries
    public = public_names()
    assert unsupported_entries(entries, public) == []
    assert {f"pyramid_examcache.{name}" for name in pyramid_examcache.__all__} <= set(entries)
    assert {"pyramid_examcache.cache.RequestCache.set_many", "pyramid_examcache.cache.cached",
            "pyramid_examcache.mail.Mailer.send_queued", "pyramid_examcache.pshell.setup",
            "pyramid_examcache.mail.Attachment"} <= set(entries)
    # the check itself can fail: an internal path, and a private member, are reported
    assert unsupported_entries(["pyramid_examcache.cache.orm.register",
                                "pyramid_examcache.cache.RequestCache",
                                "pyramid_examcache.cache.RequestCache._work"], public) == [
        "pyramid_examcache.cache.orm.register", "pyramid_examcache.cache.RequestCache._work"]


def test_the_quickstart_covers_what_a_new_user_had_to_guess():
    """docs/quickstart.md, in order: pip install, include, a first cached view, ``register``
    with the request (not ``request.tm``), the tables, and the consumer in a second terminal."""
    text = (DOCS / "quickstart.md").read_text()
    steps = ["pip install pyramid_examcache", "config.include(", "cache=",
             "pyramid_examcache.register(dbsession, request)", "create_invalidation_log",
             "create_outbox", "examcache-consumer"]
    where = [text.find(step) for step in steps]
    assert -1 not in where, dict(zip(steps, where))
    assert where == sorted(where), dict(zip(steps, where))
    assert "hiredis" in text and "second terminal" in text
    assert "register(dbsession, request.tm)" not in text
