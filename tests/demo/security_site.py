"""The demo under waitress for the issue-19 account and CSRF tests: PostgreSQL, the
throttles and the cache on Redis (a private key prefix), the mail queue on a private
Redis with no consumer (mails stay ``waiting`` in the outbox, where the tests read
them), waitress trusting 127.0.0.1 as a proxy so a test can speak for many clients
(``X-Forwarded-For``, what a TLS proxy in front of production.ini sends)."""
from __future__ import annotations

import re
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import requests
import waitress
from sqlalchemy import select

import demo_app
from pyramid_examcache.cache import get_policy
from pyramid_examcache.mail import get_mail_queue
from pyramid_examcache.mail.outbox import outbox_table

from ..conftest import free_port, wait_for_port
from ..cache.servers import close_server

ADMIN = {"examcache.admin_path": "/_examcache/", "examcache.admin_login_url": "/login"}


@dataclass
class Site:
    base: str
    app: object
    public_url: str
    http: requests.Session = field(default_factory=requests.Session)

    def request(self, method: str, path: str, *, client: str | None = None,
                cookies: dict | None = None, headers: dict | None = None,
                **kwargs) -> requests.Response:
        """One request; ``client`` becomes REMOTE_ADDR (through the trusted proxy header);
        cookies are passed explicitly (they are Secure: https public_url, http here)."""
        headers = dict(headers or {})
        if client:
            headers["X-Forwarded-For"] = client
        if cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
        return self.http.request(method, self.base + path, headers=headers,
                                 allow_redirects=False, timeout=60, **kwargs)


def set_cookies(response: requests.Response) -> dict[str, str]:
    """name -> value of every Set-Cookie of a response."""
    out = {}
    for header in response.raw.headers.getlist("Set-Cookie"):
        name, _, rest = header.partition("=")
        out[name] = rest.split(";", 1)[0]
    return out


def form_token(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]*)"', html)
    assert match, html[:500]
    return match.group(1)


def mails_to(db, email: str) -> list[dict]:
    """The outbox rows addressed to ``email``, oldest first."""
    with db.connect() as conn:
        rows = conn.execute(select(outbox_table).order_by(outbox_table.c.created_at)).mappings()
        return [dict(r) for r in rows if email in (r["recipients"] or {}).get("to", [])]


def link_of(mail: dict) -> str:
    match = re.search(r"https?://\S+(/api/auth/verify\?token=\S+)", mail["text"] or "")
    assert match, mail["text"]
    return match.group(1)


@contextmanager
def served(settings: dict, mail_redis_url: str, threads: int = 8) -> Iterator[Site]:
    """The demo on ``settings`` under waitress (``threads`` like production.ini)."""
    settings = {**settings, **ADMIN, "mail.queue_url": mail_redis_url,
                "mail.queue_name": f"acct-{uuid.uuid4().hex[:8]}"}
    app = demo_app.make_config(dict(settings)).make_wsgi_app()
    port = free_port()
    server = waitress.create_server(
        app, host="127.0.0.1", port=port, threads=threads, connection_limit=200,
        trusted_proxy="127.0.0.1", trusted_proxy_headers="x-forwarded-for",
        trusted_proxy_count=1, clear_untrusted_proxy_headers=True)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for_port(port)
    site = Site(f"http://127.0.0.1:{port}", app, settings["demo.public_url"])
    try:
        yield site
    finally:
        site.http.close()
        close_server(server, thread)
        registry = app.registry
        registry["dbengine"].dispose()
        get_policy(registry).close()
        get_mail_queue(registry).close()
        registry["demo.throttle"].close()


def browser_login(site: Site, email: str, password: str, client: str = "192.0.2.10"
                  ) -> dict[str, str]:
    """The HTML login as a browser on the public origin does it; returns its cookies."""
    page = site.request("GET", "/login", client=client)
    cookies = set_cookies(page)
    done = site.request("POST", "/login", client=client, cookies=cookies,
                        headers={"Origin": site.public_url},
                        data={"email": email, "password": password, "next": "/_examcache/",
                              "csrf_token": form_token(page.text)})
    assert done.status_code == 303, (done.status_code, done.text[:500])
    cookies.update(set_cookies(done))
    assert cookies.get("demo_auth")
    return cookies
