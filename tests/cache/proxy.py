"""A TCP proxy the test controls, to cut one process off from a server (Redis)
while the others still reach it -- a network partition on one machine.

    proxy = TcpProxy("127.0.0.1", redis_port)
    proxy.start()                 # listens on 127.0.0.1:proxy.port
    ...redis://127.0.0.1:{proxy.port}/0...
    proxy.cut()                   # the partition starts
    proxy.restore()               # it heals
    proxy.stop()

``cut()`` shuts down every connection that exists (both sides; the client
reads EOF at once) and **refuses** new ones for as long as it lasts: a connection is
still accepted, then reset immediately (``SO_LINGER`` 0: the client gets
ECONNRESET on its first read or write).  The listening socket is kept on
purpose:

* the port stays ours -- closing the listener and binding it again in
  ``restore()`` can fail (EADDRINUSE) when the kernel has meanwhile handed the
  port out as the local port of some outgoing connection, and a fresh listener
  could race with the test's next request;
* a client sees the failure immediately, as with a refused connection, instead
  of waiting for its timeout as with a blackhole (a blackhole tests the socket
  timeout, which G4's tests already do with a paused redis-server; here the
  point is only that this process cannot reach Redis).

``cut()`` returns only after every connection that existed is shut down and no
new one can be forwarded, so the test never needs a sleep to be sure.

Standard library only: one accept thread (``select`` on the listener and a
wake-up pipe, so ``stop()`` never depends on closing a socket another thread
blocks on), two pump threads per connection.
"""
from __future__ import annotations

import os
import select
import socket
import struct
import threading
import time


class TcpProxy:
    pair_class: type = None  # type: ignore[assignment]  # _Pair, set below

    def __init__(self, upstream_host: str, upstream_port: int,
                 listen_host: str = "127.0.0.1", connect_timeout: float = 5.0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.listen_host = listen_host
        self.connect_timeout = connect_timeout
        self.port: int | None = None
        self._listener: socket.socket | None = None
        self._wake_r, self._wake_w = -1, -1
        self._lock = threading.Lock()
        self._cut = False
        self._stopping = False
        self._pairs: set[_Pair] = set()
        self._threads: list[threading.Thread] = []
        self._accept_thread: threading.Thread | None = None
        self.accepted = 0  # connections accepted (forwarded or reset)
        self.refused = 0  # connections reset because the proxy was cut

    # -- control ----------------------------------------------------------------
    def start(self) -> "TcpProxy":
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.listen_host, 0))
        listener.listen(128)
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._wake_r, self._wake_w = os.pipe()
        self._accept_thread = threading.Thread(target=self._accept_loop, name="proxy-accept",
                                               daemon=True)
        self._accept_thread.start()
        return self

    @property
    def is_cut(self) -> bool:
        return self._cut

    def cut(self) -> None:
        """Close every current connection and refuse new ones until :meth:`restore`."""
        with self._lock:
            self._cut = True
            pairs = list(self._pairs)
            self._pairs.clear()
        for pair in pairs:
            pair.shutdown()

    def restore(self) -> None:
        """Forward new connections again (closed ones stay closed: clients reconnect)."""
        with self._lock:
            self._cut = False

    def stop(self) -> None:
        """Close everything and join the threads.  Idempotent."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            self._cut = True
            pairs = list(self._pairs)
            self._pairs.clear()
        for pair in pairs:
            pair.shutdown()
        if self._wake_w >= 0:
            os.write(self._wake_w, b"x")
        if self._accept_thread is not None:
            self._accept_thread.join(5)
        for thread in list(self._threads):
            thread.join(5)
        if self._listener is not None:
            self._listener.close()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def __enter__(self) -> "TcpProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- the threads --------------------------------------------------------------
    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while True:
            readable, _, _ = select.select([listener, self._wake_r], [], [])
            if self._wake_r in readable or self._stopping:
                return
            try:
                client, _ = listener.accept()
            except OSError:
                continue
            self.accepted += 1
            if self._cut:
                self.refused += 1
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=self.connect_timeout)
            except OSError:
                _reset(client)
                continue
            upstream.settimeout(None)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = self.pair_class(client, upstream)
            with self._lock:  # cut() between accept and here: never forward it
                if self._cut:
                    self.refused += 1
                    forward = False
                else:
                    self._pairs.add(pair)
                    forward = True
            if not forward:
                _reset(client)
                upstream.close()
                continue
            self._threads = [t for t in self._threads if t.is_alive()]
            for src, dst in ((client, upstream), (upstream, client)):
                thread = threading.Thread(target=self._pump, args=(src, dst, pair),
                                          name="proxy-pump", daemon=True)
                self._threads.append(thread)
                thread.start()

    def _pump(self, src: socket.socket, dst: socket.socket, pair: "_Pair") -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._pairs.discard(pair)
            pair.shutdown()  # one direction ended: end the other too
            pair.pump_done()


class _Pair:
    """A forwarded connection: the client's socket and the upstream one.

    Sockets are only *shut down* from outside (that wakes a pump blocked in
    ``recv``); they are closed by the last of the two pumps, so no file
    descriptor is closed while another thread may still use it."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.socks = (client, upstream)
        self._lock = threading.Lock()
        self._pumps = 2

    def shutdown(self) -> None:
        for sock in self.socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def pump_done(self) -> None:
        with self._lock:
            self._pumps -= 1
            last = self._pumps == 0
        if last:
            for sock in self.socks:
                sock.close()


TcpProxy.pair_class = _Pair


def _reset(sock: socket.socket) -> None:
    """Close with a RST: the peer's next read or write fails at once."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


# -- a RESP-aware proxy that can hold messages back -------------------------------------------

UP, DOWN = "up", "down"  # client -> server, server -> client


def resp_frame_end(buf: bytes | bytearray, pos: int = 0) -> int:
    """Where the RESP2 or RESP3 frame starting at ``pos`` ends (the index after it), or -1
    if ``buf`` does not hold all of it yet."""
    nl = buf.find(b"\r\n", pos)
    if nl < 0:
        return -1
    kind = buf[pos:pos + 1]
    if kind in (b"+", b"-", b":", b"_", b"#", b",", b"("):  # one line
        return nl + 2
    size = int(buf[pos + 1:nl])
    if kind in (b"$", b"=", b"!"):  # a length, then that many bytes
        if size < 0:
            return nl + 2
        end = nl + 2 + size + 2
        return end if len(buf) >= end else -1
    if kind in (b"*", b"~", b">", b"%", b"|"):  # aggregates (a map/attribute: pairs)
        end = nl + 2
        for _ in range(max(size, 0) * (2 if kind in (b"%", b"|") else 1)):
            end = resp_frame_end(buf, end)
            if end < 0:
                return -1
        if kind == b"|":  # an attribute precedes the reply it describes
            return resp_frame_end(buf, end)
        return end
    raise ValueError(f"not RESP: {bytes(buf[pos:pos + 20])!r}")


class RespProxy(TcpProxy):
    """A :class:`TcpProxy` for a Redis connection that can *delay* it: forwarding is
    done frame by frame (whole RESP2 replies and commands), and while a direction is
    held its frames are kept, in order, until :meth:`release` -- all of them, or the
    first ``frames`` (so a test can deliver, say, a ``PONG`` and keep the invalidation
    message Redis sent after it).  ``cut()`` drops what is held with the connection.

        proxy.hold(DOWN)            # replies and invalidation messages wait here
        proxy.release(DOWN, 1)      # the first one goes; -> [b"*2\\r\\n$4\\r\\npong..."]
        proxy.release(DOWN)         # the rest go, and the direction flows again
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._held = {UP: False, DOWN: False}
        #: seconds every batch of frames waits before it is forwarded (a slow link)
        self.delay = {UP: 0.0, DOWN: 0.0}

    def refuse(self) -> None:
        """Refuse new connections (as :meth:`cut` does) but keep the current ones."""
        with self._lock:
            self._cut = True

    def holding(self, direction: str) -> bool:
        return self._held[direction]

    def hold(self, direction: str) -> None:
        with self._lock:
            self._held[direction] = True

    def held(self, direction: str) -> list[bytes]:
        """The frames held now (every connection's, oldest first)."""
        with self._lock:
            pairs = list(self._pairs)
        out: list[bytes] = []
        for pair in pairs:
            with pair.lock:
                out.extend(pair.buffers[direction])
        return out

    def release(self, direction: str, frames: int | None = None) -> list[bytes]:
        """Forward the first ``frames`` held frames of ``direction`` (all of them and
        stop holding, when ``None``); returns what was forwarded.  The frames are in
        the peer's socket buffer when this returns."""
        with self._lock:
            if frames is None:
                self._held[direction] = False
            pairs = list(self._pairs)
        out: list[bytes] = []
        for pair in pairs:
            with pair.lock:
                buf = pair.buffers[direction]
                n = len(buf) if frames is None else min(frames - len(out), len(buf))
                chunk, buf[:n] = buf[:n], []
                if chunk:
                    try:
                        pair.dst(direction).sendall(b"".join(chunk))
                    except OSError:
                        pass
                out.extend(chunk)
        return out

    def _pump(self, src, dst, pair) -> None:
        direction = UP if src is pair.socks[0] else DOWN
        acc = bytearray()
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                acc += data
                frames = []
                start = 0
                while start < len(acc):
                    end = resp_frame_end(acc, start)
                    if end < 0:
                        break
                    frames.append(bytes(acc[start:end]))
                    start = end
                del acc[:start]
                if not frames:
                    continue
                if self.delay[direction]:
                    time.sleep(self.delay[direction])  # the slow link (order kept)
                with pair.lock:
                    if self._held[direction] or pair.buffers[direction]:
                        pair.buffers[direction].extend(frames)
                    else:
                        dst.sendall(b"".join(frames))
        except (OSError, ValueError):
            pass
        finally:
            with self._lock:
                self._pairs.discard(pair)
            pair.shutdown()
            pair.pump_done()


class _RespPair(_Pair):
    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        super().__init__(client, upstream)
        self.lock = threading.Lock()  # orders forwarding and releasing of one direction
        self.buffers: dict[str, list[bytes]] = {UP: [], DOWN: []}

    def dst(self, direction: str) -> socket.socket:
        return self.socks[1] if direction == UP else self.socks[0]


RespProxy.pair_class = _RespPair
