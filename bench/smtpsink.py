"""An aiosmtpd sink in a thread of the bench process: optional delay per message
(``asyncio.sleep``, so concurrent sessions overlap), optional "close the
connection after each message" (the client must reconnect), and delivery
timestamps per recipient prefix."""
from __future__ import annotations

import asyncio
import threading
import time

from .env import free_port


class Handler:
    def __init__(self) -> None:
        self.delay = 0.0
        self.close_after_message = False
        self.lock = threading.Lock()
        self.deliveries: list[tuple[float, str]] = []  # (time, first recipient)
        self.connections = 0

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        return responses

    async def handle_DATA(self, server, session, envelope):
        if self.delay:
            await asyncio.sleep(self.delay)
        with self.lock:
            self.deliveries.append((time.monotonic(), envelope.rcpt_tos[0]))
        if self.close_after_message:
            asyncio.get_running_loop().call_soon(server.transport.close)
        return "250 OK"

    def count(self, prefix: str) -> int:
        with self.lock:
            return sum(1 for _, rcpt in self.deliveries if rcpt.startswith(prefix))

    def times(self, prefix: str) -> list[float]:
        with self.lock:
            return sorted(t for t, rcpt in self.deliveries if rcpt.startswith(prefix))


class Sink:
    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.handler = Handler()
        self.port = free_port()
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)

    def __enter__(self) -> "Sink":
        self.controller.start()
        return self

    def __exit__(self, *exc) -> None:
        self.controller.stop()
