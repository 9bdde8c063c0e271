"""The Sphinx site (docs/) builds without a warning (issue 13, item 6): narrative pages
included from the README and the API reference from the docstrings; the furo theme, types
shown as types, the tutorial, the how-tos, the changelog and the screenshots (issue 23)."""
from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"


@pytest.mark.slow
def test_sphinx_builds_with_warnings_as_errors(tmp_path):
    result = subprocess.run([sys.executable, "-m", "sphinx", "-W", "-E", "-q", "-b", "html",
                             str(DOCS), str(tmp_path / "html")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    api = (tmp_path / "html" / "api.html").read_text()
    assert 'id="pyramid_examcache.mail.mailer.Mailer.send_queued"' in api
    assert 'id="pyramid_examcache.register"' in api  # the public name (the internals page
    internals = (tmp_path / "html" / "internals.html").read_text()  # has every module)
    assert "pyramid_examcache.cache.orm" in internals and "register" in internals
    assert "Coming from pyramid_mailer" in (tmp_path / "html" / "mailer.html").read_text()
    # the configuration reference is generated from the parser's tables: every setting is on it
    from pyramid_examcache.settings import CACHE_TABLE, DEPRECATED_TABLE, MAIL_TABLE

    reference = (tmp_path / "html" / "configuration.html").read_text()
    missing = [s.name for s in (*CACHE_TABLE, *MAIL_TABLE, *DEPRECATED_TABLE)
               if f'<span class="pre">{s.name}</span>' not in reference]
    assert missing == []
    quickstart = (tmp_path / "html" / "quickstart.html").read_text()
    assert "second terminal" in quickstart and "examcache-consumer" in quickstart
    html = tmp_path / "html"
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
