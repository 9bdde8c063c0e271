"""The bench's own services: a private redis-server, a private PostgreSQL
database initialised with ``examcache-initdb``, generated .ini files, waitress
processes (one per target), the consumer, and an HTTP client.

Nothing shared is touched: the Redis is a fresh process on a free port (so
``CONFIG RESETSTAT`` and ``INFO commandstats`` are ours alone), the database is
``examcache_bench_<random>`` and is dropped at the end.
"""
from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PG_ADMIN_URL = os.environ.get("EXAMCACHE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
THREADS = 8  # waitress threads, the same for every target
PREFIX = "examcache:"  # ours; the peers use seed:, dogpile:, raw:
#: the origin part of our view keys for the bench's clients (Host: 127.0.0.1:<port>)
ORIGIN = "#http%3A%2F%2F127.0.0.1"
TEACHER = ("teacher@example.com", "examcache-demo")
#: argon2 is lowered (registration cost is not what we measure): time 1, 1 MiB, 1 lane
ARGON2 = {"demo.argon2_time_cost": "1", "demo.argon2_memory_cost": "1024",
          "demo.argon2_parallelism": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def _stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class Server:
    """One waitress process serving one target."""

    def __init__(self, proc: subprocess.Popen, port: int, name: str) -> None:
        self.proc, self.port, self.name = proc, port, name
        self.base = f"http://127.0.0.1:{port}"

    def client(self) -> "Client":
        return Client(self.port)

    def stop(self) -> None:
        _stop(self.proc)


class Client:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, port: int, timeout: float = 60.0) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def connect(self) -> None:
        self.conn.connect()

    def request(self, method: str, path: str, body=None, headers: dict | None = None):
        headers = dict(headers or {})
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
            headers.setdefault("Content-Type", "application/json")
        self.conn.request(method, path, body=body, headers=headers)
        resp = self.conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data

    def json(self, method: str, path: str, body=None, headers=None, expect=(200, 201)):
        status, hdrs, data = self.request(method, path, body, headers)
        if status not in expect:
            raise AssertionError(f"{method} {path} -> {status}: {data[:300]!r}")
        return json.loads(data), hdrs

    def close(self) -> None:
        self.conn.close()


class Env:
    """Services of one bench run (use :func:`environment`)."""

    def __init__(self, workdir: str, redis_port: int, redis_proc: subprocess.Popen,
                 db_name: str, db_url: str) -> None:
        self.workdir = workdir
        self.redis_port = redis_port
        self.redis_proc = redis_proc
        self.redis_url = f"redis://127.0.0.1:{redis_port}/0"
        self.queue_url = f"redis://127.0.0.1:{redis_port}/1"
        self.db_name = db_name
        self.db_url = db_url
        self.procs: list[subprocess.Popen] = []
        self.ini = self.write_ini("bench.ini")

    # -- configuration ---------------------------------------------------------
    def settings(self, **overrides: str) -> dict[str, str]:
        s = {
            "tm.annotate_user": "false",
            "sqlalchemy.url": self.db_url,
            "sqlalchemy.pool_size": "20",
            "sqlalchemy.max_overflow": "20",
            "examcache.redis_url": self.redis_url,
            "examcache.key_prefix": PREFIX,
            "examcache.default_ttl": "3600",
            "examcache.socket_timeout": "0.25",
            "examcache.lock_timeout": "5",
            "mail.queue_url": self.queue_url,
            "mail.transport": "smtp",
            "mail.host": "127.0.0.1",
            "mail.port": "25",
            "mail.default_sender": "Exam Platform <no-reply@example.com>",
            "mail.workers": "4",
            "mail.shutdown_timeout": "2",
            "demo.secret": "bench-secret-" + "x" * 20,
            "bench.redis_url": self.redis_url,
            "demo.sample_password": TEACHER[1],  # examcache-initdb seeds the teacher with it
            # the demo's sign-up and login throttles are per client address: the bench's
            # clients are all 127.0.0.1 (mail scenarios register hundreds of users)
            "demo.signup_limit": "1000000", "demo.login_limit": "1000000",
            **ARGON2,
        }
        s.update(overrides)
        return s

    def write_ini(self, name: str, **overrides: str) -> str:
        settings = self.settings(**overrides)
        lines = ["[app:main]", "use = egg:examcache_demo"]
        lines += [f"{k} = {v}" for k, v in settings.items()]
        lines += ["", "[loggers]", "keys = root, waitress", "", "[handlers]", "keys = console", "",
                  "[formatters]", "keys = generic", "", "[logger_root]", "level = WARN",
                  "handlers = console", "", "[logger_waitress]", "level = ERROR", "handlers =",
                  "qualname = waitress", "", "[handler_console]", "class = StreamHandler",
                  "args = (sys.stderr,)", "level = NOTSET", "formatter = generic", "",
                  "[formatter_generic]", "format = %(asctime)s %(levelname)s [%(name)s] %(message)s",
                  ""]
        path = os.path.join(self.workdir, name)
        with open(path, "w") as fh:
            fh.write("\n".join(lines))
        return path

    # -- processes -----------------------------------------------------------------
    def serve(self, app: str, ini: str | None = None, threads: int = THREADS,
              name: str | None = None, counters: bool = False,
              response: str | None = None) -> Server:
        """Start ``app`` (``ours`` = the demo, ``peers``, or ``bare`` replaying the saved
        ``response``: :mod:`bench.bare`) under waitress in its own process."""
        port = free_port()
        args = [sys.executable, "-m", "bench.serve", app, "--port", str(port),
                "--threads", str(threads)]
        args += ["--response", response] if app == "bare" else ["--ini", ini or self.ini]
        if counters:
            args.append("--counters")
        log = open(os.path.join(self.workdir, f"{name or app}-{port}.log"), "wb")
        proc = subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        wait_for_port(port, proc=proc)
        return Server(proc, port, name or app)

    def consumer(self, ini: str, workers: int = 4) -> subprocess.Popen:
        exe = os.path.join(os.path.dirname(sys.executable), "examcache-consumer")
        log = open(os.path.join(self.workdir, f"consumer-{time.time():.0f}.log"), "ab")
        proc = subprocess.Popen([exe, ini, "-w", str(workers)], cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen | Server) -> None:
        if isinstance(proc, Server):
            proc = proc.proc
        _stop(proc)

    def redis(self, db: int = 0):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.redis_port, db=db)

    def pg(self):
        import psycopg

        return psycopg.connect(PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + self.db_name,
                               autocommit=True)

    def login(self, server: Server) -> str:
        client = server.client()
        try:
            data, _ = client.json("POST", "/api/auth/login",
                                  {"email": TEACHER[0], "password": TEACHER[1]})
        finally:
            client.close()
        return data["token"]

    def close(self) -> None:
        for proc in reversed(self.procs):
            _stop(proc)


def _pg_admin():
    import psycopg

    return psycopg.connect(PG_ADMIN_URL, autocommit=True)


@contextmanager
def environment(keep: bool = False):
    """Start a private Redis, create and initialise a private database, yield an :class:`Env`."""
    workdir = tempfile.mkdtemp(prefix="examcache-bench-")
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed")
    redis_port = free_port()
    redis_proc = subprocess.Popen(
        [exe, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
         "no", "--dir", workdir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db_name = f"examcache_bench_{uuid.uuid4().hex[:10]}"
    env = None
    try:
        wait_for_port(redis_port, proc=redis_proc)
        with _pg_admin() as conn:
            conn.execute(f'CREATE DATABASE "{db_name}"')
        base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
        env = Env(workdir, redis_port, redis_proc, db_name, f"{base}/{db_name}")
        exe_init = os.path.join(os.path.dirname(sys.executable), "examcache-initdb")
        subprocess.run([exe_init, env.ini], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        yield env
    finally:
        if env is not None:
            env.close()
        _stop(redis_proc)
        try:
            with _pg_admin() as conn:
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                             "WHERE datname = %s", (db_name,))
                conn.execute(f'DROP DATABASE IF EXISTS "{db_name}"')
        except Exception as exc:  # noqa: BLE001
            print(f"warning: could not drop {db_name}: {exc}", file=sys.stderr)
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
