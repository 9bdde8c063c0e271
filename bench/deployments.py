"""Multi-process deployments of the demo for the scaling scenario.

* ``waitress``: N ``python -m bench.serve ours --reuse-port`` processes, each its own
  waitress with its own listening socket on the *same* port (``SO_REUSEPORT``): the
  kernel spreads new connections over the processes (by a hash of the connection's
  addresses), with no proxy in front to cost CPU.  Waitress has no pre-fork mode; this
  is how N independent waitress processes share one port on Linux.
* ``gunicorn``: ``gunicorn --paste INI --preload -k gthread --threads T -w N``: the
  app is built once in the master and forked (the add-on's fork hooks:
  ``pyramid_examcache/cache/forking.py``); the workers accept on the master's socket.

A :class:`Deployment` quacks like :class:`bench.env.Server` (``port``, ``base``,
``name``, ``client()``) so the consistency scenario's race runs against it.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from .env import ROOT, THREADS, Client, _stop, free_port, wait_for_port


def listeners(port: int) -> int:
    """How many sockets listen on 127.0.0.1:``port`` (one per SO_REUSEPORT process)."""
    want = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as fh:
        return sum(1 for line in fh.readlines()[1:]
                   if line.split()[1] == want and line.split()[3] == "0A")


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (gunicorn's workers)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return sorted(out)


class Deployment:
    """The demo on ``processes`` processes behind one port."""

    def __init__(self, env, name: str, kind: str, processes: int, ini: str,
                 threads: int = THREADS) -> None:
        self.env, self.name, self.kind, self.processes = env, name, kind, processes
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen] = []
        log = open(os.path.join(env.workdir, f"{name}-{self.port}.log"), "wb")
        if kind == "waitress":
            for _ in range(processes):
                self._start([sys.executable, "-m", "bench.serve", "ours", "--ini", ini,
                             "--port", str(self.port), "--threads", str(threads),
                             "--reuse-port"], log)
        elif kind == "gunicorn":
            exe = os.path.join(os.path.dirname(sys.executable), "gunicorn")
            self._start([exe, "--paste", ini, "--preload", "-k", "gthread", "--threads",
                         str(threads), "-w", str(processes), "-b", f"127.0.0.1:{self.port}",
                         "--graceful-timeout", "5", "--log-level", "warning"], log)
        else:
            raise ValueError(kind)
        self._wait_ready()

    def _start(self, args: list[str], log) -> None:
        proc = subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        self.env.procs.append(proc)

    def _wait_ready(self, timeout: float = 60.0) -> None:
        wait_for_port(self.port, timeout, proc=self.procs[0])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{self.name}: {proc.args!r} exited with {proc.returncode}")
            if self.kind == "waitress" and listeners(self.port) >= self.processes:
                return
            if self.kind == "gunicorn" and len(children(self.procs[0].pid)) >= self.processes:
                return
            time.sleep(0.05)
        raise TimeoutError(f"{self.name}: not all {self.processes} processes are up")

    def pids(self) -> list[int]:
        """The processes that serve requests (gunicorn: the workers, not the master)."""
        if self.kind == "gunicorn":
            return children(self.procs[0].pid)
        return [p.pid for p in self.procs]

    def client(self) -> Client:
        return Client(self.port)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            _stop(proc)
