"""The debug toolbar's panel (issue 13, item 1): a request with a HIT, a MISS, an
invalidation applied after the commit and a queued mail, rendered by pyramid_debugtoolbar."""
from __future__ import annotations

import itertools
import re

import pytest
from pyramid.config import Configurator
from pyramid.response import Response
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker
from webtest import TestApp

from ..conftest import private_database
from ..mail.support import get_tm_session

COLD = itertools.count()


def page_view(request):
    request.cache.get_or_set("panel:warm", lambda: {"v": 1})  # stored by the first request
    request.cache.get_or_set(f"panel:cold:{next(COLD)}", lambda: {"v": 2}, tags=("panel",))
    request.cache.invalidate("panel:gone", tags=("other",))
    if request.params.get("mail"):
        request.mailer.send_queued("ann@example.com", "Hello <there>", "<p>hi</p>")
    if request.params.get("abort"):
        request.tm.doom()
    return Response("<html><body><p>ok</p></body></html>", content_type="text/html")


@pytest.fixture(scope="module")
def panel_db():
    """Its own database: the outbox table made here must not meet the demo's migrations."""
    with private_database("panel") as url:
        yield url


@pytest.fixture
def app(panel_db):
    from pyramid_examcache.mail.outbox import metadata

    engine = create_engine(panel_db)
    metadata.create_all(engine)
    factory = sessionmaker(bind=engine)
    config = Configurator(settings={
        "sqlalchemy.url": panel_db, "examcache.redis_url": "memory://",
        "debugtoolbar.hosts": "0.0.0.0/0", "debugtoolbar.intercept_exc": "false"})
    config.include("pyramid_tm")
    config.add_request_method(lambda r: get_tm_session(factory, r.tm, request=r), "dbsession",
                              reify=True)
    config.include("pyramid_examcache")
    config.include("pyramid_examcache.testing")
    config.include("pyramid_debugtoolbar")
    config.include("pyramid_examcache.debugtoolbar")
    config.add_route("page", "/page")
    config.add_view(page_view, route_name="page")
    yield TestApp(config.make_wsgi_app(), extra_environ={"REMOTE_ADDR": "127.0.0.1"})
    engine.dispose()


def panel_of(app, response) -> str:
    match = re.search(r'/_debug_toolbar/([0-9a-f]+)', response.text)
    assert match, "the toolbar was not injected"
    page = app.get(f"/_debug_toolbar/{match.group(1)}", status=200).text
    start = page.index('id="pDebugPanel-examcache-content"')
    return page[start:start + 20000]


def test_the_panel_shows_a_hit_a_miss_an_invalidation_and_a_mail(app):
    app.get("/page", status=200)  # warms panel:warm
    panel = panel_of(app, app.get("/page", params={"mail": "1"}, status=200))
    rows = re.findall(r"<tr>\s*<td>(\d+)</td><td>(\w+)</td><td><code>([^<]*)</code></td>\s*"
                      r"<td>([^<]*)</td><td class=\"examcache-outcome\">([^<]*)</td>", panel)
    ops = [(kind, key, outcome) for _n, kind, key, _tags, outcome in rows]
    assert ops[0] == ("get_or_set", "panel:warm", "HIT")
    assert ops[1][0] == "get_or_set" and ops[1][1].startswith("panel:cold:")
    assert ops[1][2] == "MISS stored"
    assert re.search(r'examcache-when">queued</td><td><code>panel:gone</code></td><td>other',
                     panel)
    assert re.search(r'examcache-when">applied</td><td><code>panel:gone</code></td><td>other',
                     panel)
    assert "Hello &lt;there&gt;" in panel and "ann@example.com" in panel  # escaped


def test_an_aborted_request_shows_its_invalidations_dropped(app):
    panel = panel_of(app, app.get("/page", params={"abort": "1"}, status=200))
    assert re.search(r'examcache-when">dropped</td><td><code>panel:gone</code>', panel)
    assert "examcache-when\">applied" not in panel


def test_the_toolbar_convention_debugtoolbar_includes_works_too():
    config = Configurator(settings={
        "examcache.redis_url": "memory://", "debugtoolbar.hosts": "0.0.0.0/0",
        "debugtoolbar.includes": "pyramid_examcache.debugtoolbar"})
    config.include("pyramid_tm")
    config.include("pyramid_examcache.cache")
    config.include("pyramid_debugtoolbar")

    def view(request):
        request.cache.get_or_set("conv:a", lambda: 1)
        return Response("<html><body>x</body></html>", content_type="text/html")

    config.add_route("v", "/v")
    config.add_view(view, route_name="v")
    app = TestApp(config.make_wsgi_app(), extra_environ={"REMOTE_ADDR": "127.0.0.1"})
    panel = panel_of(app, app.get("/v"))
    assert "conv:a" in panel and "MISS stored" in panel
