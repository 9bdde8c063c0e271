"""Issue 19 (deployment half): production.ini as shipped is safe by default.

The server under test is production.ini itself -- ``examcache-initdb`` and ``pserve``
run as processes on a copy of it that only points at private resources (a PostgreSQL
database, a Redis key prefix and queue name, a free port, a real secret, cheap argon2):
every [server:main] value (waitress's limits) and every demo.* value is production.ini's.

* no known password: initdb prints a random one, ``examcache-demo`` fails, re-running
  initdb keeps what an operator changed, the pages show a password only on development
  settings;
* the listener: a 200 MB body is refused before 50 MB are read, 150 idle connections do
  not lock a real client out;
* /metrics: refused (404) to clients outside demo.metrics_allow, directly and behind the
  documented trusted proxy; served to the local scrape;
* job status only for its recipient or an admin; links from demo.public_url whatever the
  Host header; no HTML page may be framed.
"""
from __future__ import annotations

import configparser
import http.client
import json
import re
import secrets
import select
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from pyramid.paster import get_appsettings
from sqlalchemy import create_engine, select as sql_select, update
from sqlalchemy.pool import NullPool

from demo_app.models import User
from demo_app.sample import TEACHER_EMAIL, TEACHER_PASSWORD
from demo_app.security import hash_password, make_password_hasher
from demo_app.settings import parse_demo_settings

from ..conftest import REDIS_URL, free_port, private_database, stop_processes, wait_for_port
from .conftest import FAST_ARGON2, SECRET, base_settings, close_testapp, make_testapp
from .helpers import bearer, login, register_verified

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION_INI = ROOT / "production.ini"
DEVELOPMENT_INI = ROOT / "development.ini"
MB = 1024 * 1024
PUBLIC_URL = "https://exams.example.com"  # production.ini's demo.public_url


def script(name: str) -> str:
    exe = Path(sys.executable).parent / name
    assert exe.exists(), f"{exe} is missing (pip install -e demo_app)"
    return str(exe)


def set_option(text: str, section: str, key: str, value: str) -> str:
    """``key = value`` in ``[section]`` of an .ini text: replaced if there, else added."""
    pattern = re.compile(rf"^{re.escape(key)} = .*$", re.M)
    start = text.index(f"[{section}]\n")
    end = text.find("\n[", start + 1)
    end = len(text) if end < 0 else end
    body = text[start:end]
    if pattern.search(body):
        body = pattern.sub(lambda _: f"{key} = {value}", body, count=1)
    else:
        header = f"[{section}]\n"
        body = header + f"{key} = {value}\n" + body[len(header):]
    return text[:start] + body + text[end:]


def proxy_block(text: str) -> dict[str, str]:
    """The commented values production.ini documents for running behind a TLS proxy."""
    server = text[text.index("[server:main]"):]
    return dict(re.findall(r"^#   ([a-z_]+) = (.+)$", server, re.M))


class Deployment:
    """A copy of production.ini on private resources, initialised by examcache-initdb."""

    def __init__(self, tmp: Path, db_url: str) -> None:
        self.tmp, self.db_url = tmp, db_url
        self.prefix = f"examcache-test:{uuid.uuid4().hex[:12]}:"
        self.queue = f"secdeploy-{uuid.uuid4().hex[:8]}"
        text = PRODUCTION_INI.read_text()
        app = {"sqlalchemy.url": db_url, "examcache.key_prefix": self.prefix,
               "mail.queue_name": self.queue, "demo.secret": secrets.token_hex(32),
               # many logins from 127.0.0.1 in one module: not what these tests are about
               "demo.login_limit": "1000", **FAST_ARGON2}
        for key, value in app.items():
            text = set_option(text, "app:main", key, value)
        self.text = text
        self.ini = self.write("production.ini", text)
        self.procs: list[subprocess.Popen] = []
        self.logs: list = []

    def write(self, name: str, text: str) -> Path:
        path = self.tmp / name
        path.write_text(text)
        return path

    def initdb(self) -> str:
        done = subprocess.run([script("examcache-initdb"), str(self.ini)], capture_output=True,
                              text=True, timeout=120, cwd=self.tmp)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def serve(self, name: str, **server: str) -> int:
        """pserve on a copy of the .ini with these [server:main] values and a free port."""
        port = free_port()
        text = set_option(self.text, "server:main", "listen", f"127.0.0.1:{port}")
        for key, value in server.items():
            text = set_option(text, "server:main", key, value)
        ini = self.write(f"{name}.ini", text)
        log = open(self.tmp / f"{name}.log", "wb")
        self.logs.append(log)
        self.procs.append(subprocess.Popen([script("pserve"), str(ini)], stdout=log,
                                           stderr=subprocess.STDOUT, cwd=self.tmp))
        wait_for_port(port, timeout=30)
        return port

    def close(self) -> None:
        stop_processes(self.procs)
        for log in self.logs:
            log.close()
        import redis

        # the cache's keys (db 0) and the mail queue's (production.ini: db 1)
        for url in (REDIS_URL, REDIS_URL.rsplit("/", 1)[0] + "/1"):
            client = redis.Redis.from_url(url)
            for pattern in (self.prefix + "*", f"*{self.queue}*"):
                keys = list(client.scan_iter(match=pattern, count=1000))
                if keys:
                    client.delete(*keys)
            client.close()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    with private_database("secdeploy") as url:
        dep = Deployment(tmp_path_factory.mktemp("production"), url)
        try:
            dep.first_run = dep.initdb()
            match = re.search(r"shown only now[^\n]*\n\s+(\S+)\s*$", dep.first_run)
            assert match, dep.first_run
            dep.password = match.group(1)
            dep.port = dep.serve("server")
            yield dep
        finally:
            dep.close()


@pytest.fixture(scope="module")
def behind_proxy(deployment) -> int:
    """The same deployment with production.ini's commented trusted-proxy values switched on."""
    values = proxy_block(deployment.text)
    assert values == {"listen": "127.0.0.1:6543", "trusted_proxy": "127.0.0.1",
                      "trusted_proxy_count": "1",
                      "trusted_proxy_headers": "x-forwarded-for x-forwarded-proto",
                      "url_scheme": "https"}, values
    values.pop("listen")  # the free port instead
    return deployment.serve("proxied", **values)


def request(port: int, method: str, path: str, *, body: bytes | None = None,
            headers: dict | None = None, source: str = "127.0.0.1",
            timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request from ``source`` (any 127/8 address is this host)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout,
                                      source_address=(source, 0))
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def api(port: int, method: str, path: str, payload: dict | None = None,
        token: str | None = None, **kw) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    status, _, body = request(port, method, path, headers=headers,
                              body=json.dumps(payload).encode() if payload is not None else None,
                              **kw)
    return status, json.loads(body) if body else {}


def engine_of(deployment):
    return create_engine(deployment.db_url, poolclass=NullPool)


# -- 1. no known password --------------------------------------------------------------

def test_production_initdb_gives_the_admin_a_random_printed_password(deployment):
    assert "examcache-demo" not in deployment.first_run
    assert len(deployment.password) >= 20 and deployment.password != TEACHER_PASSWORD
    # the published password does not open the admin account
    status, body = api(deployment.port, "POST", "/api/auth/login",
                       {"email": TEACHER_EMAIL, "password": TEACHER_PASSWORD})
    assert status == 401, body
    status, body = api(deployment.port, "POST", "/api/auth/login",
                       {"email": TEACHER_EMAIL, "password": deployment.password})
    assert status == 200, body
    # ... the printed one does, and it opens the admin page
    status, _, page = request(deployment.port, "GET", "/_examcache/",
                              headers=bearer(body["token"]))
    assert status == 200 and b"examcache" in page.lower()
    engine = engine_of(deployment)
    with engine.connect() as conn:
        assert conn.scalar(sql_select(User.is_admin).where(User.email == TEACHER_EMAIL))
    engine.dispose()


def test_rerunning_initdb_keeps_what_an_operator_changed(deployment):
    engine = engine_of(deployment)
    hasher = make_password_hasher(parse_demo_settings(get_appsettings(str(deployment.ini))))
    with engine.begin() as conn:
        original = conn.execute(sql_select(User.password_hash, User.is_admin)
                                .where(User.email == TEACHER_EMAIL)).one()
        conn.execute(update(User).where(User.email == TEACHER_EMAIL).values(
            is_admin=False, password_hash=hash_password(hasher, "the operator's own choice")))
    try:
        out = deployment.initdb()
        assert "added 0 user(s)" in out and "left as they are" in out, out
        assert "shown only now" not in out
        with engine.connect() as conn:
            assert conn.scalar(sql_select(User.is_admin)
                               .where(User.email == TEACHER_EMAIL)) is False
        assert api(deployment.port, "POST", "/api/auth/login",
                   {"email": TEACHER_EMAIL, "password": deployment.password})[0] == 401
        status, body = api(deployment.port, "POST", "/api/auth/login",
                           {"email": TEACHER_EMAIL, "password": "the operator's own choice"})
        assert status == 200, body
        # no longer an admin: the admin page is refused
        status, _, _ = request(deployment.port, "GET", "/_examcache/",
                               headers=bearer(body["token"]))
        assert status in (302, 303, 403), status
    finally:
        with engine.begin() as conn:
            conn.execute(update(User).where(User.email == TEACHER_EMAIL).values(
                is_admin=original.is_admin, password_hash=original.password_hash))
        engine.dispose()


def test_the_pages_show_the_password_only_on_development_settings(deployment, db):
    for path, accept in (("/", "text/html"), ("/", "application/json"), ("/login", "text/html")):
        status, _, body = request(deployment.port, "GET", path, headers={"Accept": accept})
        assert status == 200 and TEACHER_EMAIL.encode() in body, (path, body[:300])
        assert TEACHER_PASSWORD.encode() not in body, (path, accept)
        assert deployment.password.encode() not in body
        assert b"examcache-initdb" in body  # where the password comes from instead

    dev = get_appsettings(str(DEVELOPMENT_INI))
    assert dev["demo.sample_password"] == TEACHER_PASSWORD
    assert "demo.sample_password" not in get_appsettings(str(PRODUCTION_INI))
    app = make_testapp(base_settings(db.url.render_as_string(hide_password=False),
                                     **{"demo.sample_password": dev["demo.sample_password"]}))
    try:
        for path, accept in (("/", "text/html"), ("/", "application/json"),
                             ("/login", "text/html")):
            page = app.get(path, headers={"Accept": accept}, status=200)
            assert TEACHER_PASSWORD in page.text, (path, accept)
        login(app)  # and it is the teacher's password there
    finally:
        close_testapp(app)


# -- 2. the listener -------------------------------------------------------------------

def test_production_ini_bounds_bodies_at_demo_max_body_bytes():
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(PRODUCTION_INI)
    assert parser["server:main"]["max_request_body_size"] == parser["app:main"][
        "demo.max_body_bytes"]


def send_announced_body(port: int, announced: int, cap: int) -> tuple[int, bytes]:
    """POST announcing ``announced`` bytes and stream them until the server answers or
    closes, or ``cap`` bytes are sent; returns (bytes sent, what the server answered)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sent, answer = 0, b""
    try:
        sock.sendall((f"POST /api/auth/register HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                      f"Content-Type: application/json\r\nContent-Length: {announced}\r\n"
                      f"\r\n").encode())
        chunk = b"x" * (256 * 1024)
        while sent < cap:
            readable, writable, _ = select.select([sock], [sock], [], 10)
            if readable or not writable:  # an answer (or a close), or a stalled server
                break
            try:
                sent += sock.send(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
        sock.settimeout(5)
        try:
            while b"\r\n\r\n" not in answer:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
        except (ConnectionResetError, TimeoutError, socket.timeout):
            pass
    finally:
        sock.close()
    return sent, answer


def test_a_200_mb_body_is_refused_with_413_before_50_mb_are_read(deployment):
    sent, answer = send_announced_body(deployment.port, 200 * MB, 50 * MB)
    assert sent < 50 * MB, f"the server read {sent / MB:.0f} MB without answering"
    assert answer.startswith(b"HTTP/1.1 413"), (sent, answer[:200])
    print(f"\nsent {sent / MB:.2f} MB of an announced 200 MB before the 413")
    # the server is fine afterwards
    assert request(deployment.port, "GET", "/api/exams/1")[0] == 200


def test_150_idle_connections_do_not_lock_out_a_real_client(deployment):
    idle = []
    try:
        for _ in range(150):  # opened, nothing sent
            idle.append(socket.create_connection(("127.0.0.1", deployment.port), timeout=5))
        started = time.monotonic()
        status, _, _ = request(deployment.port, "GET", "/api/exams/1/questions", timeout=5)
        elapsed = time.monotonic() - started
        assert status == 200 and elapsed < 5, elapsed
        print(f"\nGET answered in {elapsed * 1000:.0f} ms with 150 idle connections open")
    finally:
        for sock in idle:
            sock.close()


# -- 3. /metrics off the public listener ------------------------------------------------

def metrics_link(port: int, source: str) -> bool:
    status, _, body = request(port, "GET", "/", headers={"Accept": "application/json"},
                              source=source)
    assert status == 200
    return any(link["href"].endswith("/metrics") for link in json.loads(body)["links"])


def test_metrics_are_refused_to_public_clients_and_served_to_the_local_scrape(deployment):
    port = deployment.port
    unknown = request(port, "GET", "/no-such-page", source="127.0.0.2")
    for source in ("127.0.0.2", "127.0.0.53"):  # outside 127.0.0.1/32: "public" clients
        status, headers, body = request(port, "GET", "/metrics", source=source)
        assert status == 404, (source, body[:200])
        assert b"examcache_" not in body and headers["Content-Type"] == unknown[1]["Content-Type"]
        assert request(port, "HEAD", "/metrics", source=source)[0] == 404
        assert not metrics_link(port, source)  # and the home page does not show it
    # a client-written header changes nothing (waitress trusts no proxy here)
    status, _, _ = request(port, "GET", "/metrics", source="127.0.0.2",
                           headers={"X-Forwarded-For": "127.0.0.1"})
    assert status == 404
    # Prometheus on this host
    status, headers, body = request(port, "GET", "/metrics", source="127.0.0.1")
    assert status == 200 and b"examcache_mail_jobs" in body, body[:200]
    assert metrics_link(port, "127.0.0.1")


def test_metrics_behind_the_documented_trusted_proxy(deployment, behind_proxy):
    """production.ini's commented proxy values: REMOTE_ADDR is the client the proxy saw."""
    port = behind_proxy
    # through the proxy (which connects from 127.0.0.1 and appends the client's address)
    for forwarded in ("203.0.113.7", "127.0.0.1, 203.0.113.7"):  # the 2nd: a forged first hop
        status, _, body = request(port, "GET", "/metrics",
                                  headers={"X-Forwarded-For": forwarded,
                                           "X-Forwarded-Proto": "https"})
        assert status == 404, (forwarded, body[:200])
    # a client that is not the proxy cannot claim an address
    assert request(port, "GET", "/metrics", source="127.0.0.2",
                   headers={"X-Forwarded-For": "127.0.0.1"})[0] == 404
    # Prometheus on this host, straight to waitress (no proxy header)
    status, _, body = request(port, "GET", "/metrics")
    assert status == 200 and b"examcache_" in body


def test_demo_metrics_allow_rejects_a_malformed_network():
    from pyramid.exceptions import ConfigurationError

    with pytest.raises(ConfigurationError, match="demo.metrics_allow"):
        parse_demo_settings({"demo.secret": SECRET, "demo.metrics_allow": "127.0.0.1/8"})
    with pytest.raises(ConfigurationError, match="demo.metrics_allow"):
        parse_demo_settings({"demo.secret": SECRET, "demo.metrics_allow": "localhost"})
    with pytest.raises(ConfigurationError, match="demo.sample_password"):
        parse_demo_settings({"demo.secret": SECRET, "demo.sample_password": "short"})


def test_a_published_sample_password_is_logged_as_a_warning(caplog):
    with caplog.at_level("WARNING", logger="demo_app.settings"):
        parse_demo_settings({"demo.secret": SECRET, "demo.sample_password": TEACHER_PASSWORD})
    assert any("demo.sample_password is set" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="demo_app.settings"):
        assert parse_demo_settings({"demo.secret": SECRET}).sample_password is None
    assert not any("sample_password" in r.getMessage() for r in caplog.records)


# -- 4. job status, links, framing -------------------------------------------------------

def test_job_status_answers_only_its_recipient_or_an_admin(app, mail):
    token = register_verified(app, mail, "owner@example.com")
    job_id = mail.last.job_id
    other = register_verified(app, mail, "other@example.com")
    unknown = app.get("/api/jobs/0123456789abcdef0123456789abcdef", status=404).json

    assert app.get(f"/api/jobs/{job_id}", status=404).json == unknown  # anonymous
    assert app.get(f"/api/jobs/{job_id}", headers=bearer(other), status=404).json == unknown
    own = app.get(f"/api/jobs/{job_id}", headers=bearer(token), status=200)
    assert own.json["id"] == job_id and "private" in own.headers["Cache-Control"]
    admin = app.get(f"/api/jobs/{job_id}", headers=bearer(login(app)), status=200).json
    assert admin["id"] == job_id


def test_job_status_through_waitress_is_404_to_anonymous_clients(deployment):
    status, body = api(deployment.port, "POST", "/api/auth/register",
                       {"email": "ada@example.com", "password": "correct horse battery",
                        "name": "Ada"})
    assert status == 201, body
    job_id = body["email"]["jobId"]
    status, body = api(deployment.port, "GET", f"/api/jobs/{job_id}")
    assert status == 404 and body["message"] == "no such job"
    _, admin = api(deployment.port, "POST", "/api/auth/login",
                   {"email": TEACHER_EMAIL, "password": deployment.password})
    status, body = api(deployment.port, "GET", f"/api/jobs/{job_id}", token=admin["token"])
    assert status == 200 and body["id"] == job_id and body["state"] == "waiting"


def test_home_page_links_ignore_a_forged_host_header(deployment):
    for accept in ("text/html", "application/json"):
        status, _, body = request(deployment.port, "GET", "/",
                                  headers={"Host": "evil.example.net", "Accept": accept},
                                  source="127.0.0.1")
        assert status == 200
        assert b"evil" not in body, body
        text = body.decode()
        hrefs = re.findall(r'href="([^"]+)"', text) if accept == "text/html" else [
            link["href"] for link in json.loads(text)["links"]]
        assert hrefs and all(h.startswith(PUBLIC_URL + "/") for h in hrefs), hrefs
        assert f"curl -s -X POST {PUBLIC_URL}/api/auth/login" in text.replace("&#39;", "'")


def test_every_html_page_forbids_framing(deployment):
    _, admin = api(deployment.port, "POST", "/api/auth/login",
                   {"email": TEACHER_EMAIL, "password": deployment.password})
    pages = [("/", {}), ("/login", {}), ("/_examcache/", bearer(admin["token"]))]
    for path, headers in pages:
        status, answer, _ = request(deployment.port, "GET", path,
                                    headers={"Accept": "text/html", **headers})
        assert status == 200 and answer["Content-Type"].startswith("text/html"), (path, status)
        assert answer.get("X-Frame-Options") == "DENY", (path, answer)
        assert "frame-ancestors 'none'" in answer.get("Content-Security-Policy", ""), path
