"""The Sphinx site (docs/) builds without a warning (issue 13, item 6): narrative pages
included from the README and the API reference from the docstrings."""
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
