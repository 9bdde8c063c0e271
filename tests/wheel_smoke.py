"""A smoke test run by a fresh virtual environment's python on the installed wheel (with
the extras admin, metrics and debugtoolbar), from a directory outside the working tree;
tests/test_wheel.py runs it. Standalone: the installed package and its extras, SQLite,
``memory://`` and WSGI requests made with ``Request.blank``, no test dependency.

    python wheel_smoke.py VERSION TEMPLATE...

TEMPLATE: a path inside the package (``admin/templates/jobs.examcache_admin``). Each
check prints ``ok <name>``; every check runs, and any failure is a non-zero exit."""
from __future__ import annotations

import importlib.resources
import re
import sys
import tempfile
import traceback
from pathlib import Path

from pyramid.config import Configurator
from pyramid.csrf import CookieCSRFStoragePolicy
from pyramid.request import Request
from pyramid.response import Response
from pyramid.security import Allowed, Denied

ADMIN = {"X-Smoke-User": "admin"}
LOCAL = {"REMOTE_ADDR": "127.0.0.1"}


class HeaderPolicy:
    """``X-Smoke-User: admin`` holds the admin page's permission."""

    def identity(self, request):
        return request.headers.get("X-Smoke-User")

    def authenticated_userid(self, request):
        return self.identity(request)

    def permits(self, request, context, permission):
        if permission == "examcache.admin" and self.identity(request) != "admin":
            return Denied("not the admin")
        return Allowed("smoke")

    def remember(self, request, userid, **kw):
        return []

    def forget(self, request, **kw):
        return []


def page_view(request):
    request.cache.get_or_set("smoke:value", lambda: {"v": 1}, tags=("smoke",))
    job = request.mailer.send_queued("ann@example.com", "Smoke", "<p>hi</p>")
    return Response(f"<html><body><p id='job'>{job.id}</p></body></html>",
                    content_type="text/html")


def cached_view(request):
    return {"cached": True}


def make_app(tmp: Path):
    import zope.sqlalchemy
    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker

    from pyramid_examcache.mail.outbox import metadata

    url = f"sqlite:///{tmp}/smoke.sqlite"
    metadata.create_all(create_engine(url))
    factory = sessionmaker(bind=create_engine(url))

    def dbsession(request):
        session = factory()
        zope.sqlalchemy.register(session, transaction_manager=request.tm)
        return session

    config = Configurator(settings={
        "sqlalchemy.url": url, "examcache.redis_url": "memory://",
        "examcache.admin_path": "/_examcache/", "examcache.metrics_path": "/metrics",
        "mail.queue_url": f"sqlite:///{tmp}/huey.sqlite", "mail.transport": "memory",
        "debugtoolbar.hosts": "127.0.0.1", "debugtoolbar.intercept_exc": "false",
        "debugtoolbar.includes": "pyramid_examcache.debugtoolbar"})
    config.set_security_policy(HeaderPolicy())
    config.set_csrf_storage_policy(CookieCSRFStoragePolicy())
    config.include("pyramid_tm")
    config.add_request_method(dbsession, "dbsession", reify=True)
    config.include("pyramid_examcache")
    config.include("pyramid_debugtoolbar")
    config.add_route("page", "/page")
    config.add_view(page_view, route_name="page")
    config.add_route("cached", "/cached")
    config.add_view(cached_view, route_name="cached", renderer="json", cache="smoke:cached")
    return config.make_wsgi_app()


def get(app, path: str, status: int, headers: dict | None = None):
    response = Request.blank(path, environ=dict(LOCAL), headers=headers or {}).get_response(app)
    assert response.status_code == status, (path, response.status, response.text[:3000])
    return response


def check_version(expected: str) -> None:
    import pyramid_examcache

    assert Path(pyramid_examcache.__file__).resolve().is_relative_to(Path(sys.prefix).resolve()), \
        f"not the installed package: {pyramid_examcache.__file__}"
    assert pyramid_examcache.__version__ == expected, (pyramid_examcache.__version__, expected)
    print("ok version", expected)


def check_entry_points() -> None:
    """The console script and the Paste filter of the installed distribution resolve."""
    from importlib.metadata import distribution

    points = {(ep.group, ep.name): ep for ep in distribution("pyramid_examcache").entry_points}
    consumer = points[("console_scripts", "examcache-consumer")].load()
    assert callable(consumer), consumer
    assert (Path(sys.prefix) / "bin" / "examcache-consumer").is_file()
    fast_path = points[("paste.filter_app_factory", "fast_path")].load()
    assert callable(fast_path), fast_path
    print("ok entry points")


def check_templates(names: list[str]) -> None:
    """Every template of the source tree is in the installed package and compiles with its
    engine: Jinja2 for the admin page, Mako for the toolbar panel."""
    import jinja2
    from mako.lookup import TemplateLookup

    package = importlib.resources.files("pyramid_examcache")
    assert names, "no template given"
    for name in names:
        resource = package.joinpath(name)
        assert resource.is_file(), f"{name} is missing from the installed package"
        folder = str(Path(str(resource)).parent)
        leaf = name.rsplit("/", 1)[-1]
        if name.endswith(".examcache_admin"):
            jinja2.Environment(loader=jinja2.FileSystemLoader(folder)).get_template(leaf)
        elif name.endswith(".dbtmako"):
            TemplateLookup(directories=[folder]).get_template(leaf)
        else:
            raise AssertionError(f"{name}: which engine renders it? (add it to wheel_smoke.py)")
        print("ok template", name)


def check_pages(app) -> None:
    page = get(app, "/page", 200)
    job = re.search(r"<p id='job'>([^<]+)</p>", page.text).group(1)
    toolbar = re.search(r"/_debug_toolbar/([0-9a-f]+)", page.text)
    assert toolbar, "the toolbar was not injected"
    panel = get(app, f"/_debug_toolbar/{toolbar.group(1)}", 200).text
    assert 'id="pDebugPanel-examcache-content"' in panel and "smoke:value" in panel
    assert "MISS stored" in panel and "ann@example.com" in panel
    print("ok debugtoolbar panel")
    assert get(app, "/cached", 200).headers["X-Cache"] == "MISS"
    assert get(app, "/cached", 200).headers["X-Cache"] == "HIT"
    print("ok cached view")
    jobs = get(app, "/_examcache/", 200, ADMIN).text
    assert job in jobs and "ann@example.com" in jobs
    assert job in get(app, f"/_examcache/jobs/{job}", 200, ADMIN).text
    cache = get(app, "/_examcache/cache", 200, ADMIN).text
    assert re.search(r'<td class="mono">misses</td><td class="num">[1-9]', cache), cache[-3000:]
    assert "404" in get(app, "/_examcache/jobs/nonesuch", 404, ADMIN).text
    get(app, "/_examcache/", 403)
    print("ok admin page")
    metrics = get(app, "/metrics", 200).text
    assert re.search(r'^examcache_cache_misses_total\{prefix="examcache:"\} [1-9]', metrics,
                     re.M), metrics[:3000]
    assert re.search(r'^examcache_mail_jobs\{state="waiting"\} 1\.0$', metrics, re.M), \
        metrics[:3000]
    print("ok metrics")


def check_app() -> None:
    with tempfile.TemporaryDirectory(prefix="examcache-smoke-") as tmp:
        check_pages(make_app(Path(tmp)))


def main(argv: list[str]) -> int:
    """Run every check, even after one failed (each names what it found); 1 if any failed."""
    version, templates = argv[0], argv[1:]
    checks = [("version", lambda: check_version(version)),
              ("templates", lambda: check_templates(templates)),
              ("entry points", check_entry_points), ("app", check_app)]
    failed = []
    for name, check in checks:
        try:
            check()
        except Exception:  # noqa: BLE001 -- reported, and the exit status says it failed
            failed.append(name)
            print(f"FAILED {name}:\n{traceback.format_exc()}", file=sys.stderr)
    print(f"SMOKE FAILED: {', '.join(failed)}" if failed else "SMOKE OK")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
