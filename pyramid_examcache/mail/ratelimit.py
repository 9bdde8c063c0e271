"""``mail.rate_limit`` and ``mail.domain_rate_limits``: at most N sends in any window.

Every consumer process (and each of its workers) asks one :class:`SendLimiter` before a
send; they share its log (:mod:`.ratewindow`) through the mail queue's Redis, or through a
SQLite file beside an embedded ``sqlite:///`` queue (``<queue file>.ratelimit``). The
guarantee: for each limit ``N/period``, no window of ``period`` seconds -- anywhere in
time, a sliding window, not fixed buckets -- holds more than N arrivals at the SMTP server
of mails sent by these consumers (docs/design/mail.md, "Rate limits").

How a mail counts: once against each rate of ``mail.rate_limit`` (``14/s, 50000/d``: two
limits; a mail is one SMTP transaction, whatever its recipients), and once against the limit
of each *distinct* domain among its envelope recipients (To, Cc, Bcc) that has one: a mail to
two gmail.com addresses and one example.org address counts once for gmail.com and once for
example.org. It needs a slot in every one of its limits at once, or waits.

A job refused a slot is not failed and its attempt is not counted: :func:`.throttle.hold_back`
puts it back ``delayed`` with ``nextAttemptAt`` when the limiter expects a free slot.
If the log's storage cannot be reached, nothing is sent (:class:`LimiterUnavailable`; the
job is held back the same way and tried again): a limit is never exceeded silently.
"""
from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from typing import Any

from ..rates import Rate
from .ratewindow import RedisWindows, SqliteWindows, Window

log = logging.getLogger(__name__)

__all__ = ["LimiterUnavailable", "SendLimiter", "build_limiter", "recipient_domains"]


class LimiterUnavailable(ConnectionError):
    """The send log's storage did not answer: do not send now."""


def recipient_domains(recipients: Iterable[str]) -> set[str]:
    """The lower-cased domains of envelope ``recipients`` (IDNA A-labels)."""
    domains = set()
    for address in recipients:
        domain = address.rpartition("@")[2].strip().rstrip(".").lower()
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            pass
        domains.add(domain)
    return domains


class SendLimiter:
    """The limits of one mail queue over a shared send log (``store``)."""

    def __init__(self, store: Any, prefix: str, rates: Iterable[Rate],
                 domain_rates: Iterable[tuple[str, Rate]], hold: float) -> None:
        self.store, self.prefix, self.hold = store, prefix, hold
        self.rates = tuple(rates)
        self.domain_rates = dict(domain_rates)

    def windows(self, domains: Iterable[str]) -> list[Window]:
        """The ``(key, count, period)`` a mail to ``domains`` needs a slot in."""
        out: list[Window] = []
        for rate in self.rates:  # e.g. 14/s and 50000/d, each its own log
            out.append((f"{self.prefix}:all:{rate.period:g}", rate.limit, rate.period))
        for domain in sorted(set(domains)):
            limit = self.domain_rates.get(domain)
            if limit is not None:
                out.append((f"{self.prefix}:domain:{domain}", limit.limit, limit.period))
        return out

    def acquire(self, domains: Iterable[str]) -> tuple[str | None, float, list[Window]]:
        """``(token, 0.0, windows)`` when a send may start now (``token`` None: no limit
        applies), else ``(None, seconds to wait, windows)``. Raises LimiterUnavailable."""
        windows = self.windows(domains)
        if not windows:
            return None, 0.0, windows
        token = uuid.uuid4().hex
        try:
            wait = self.store.acquire(windows, token, self.hold)
        except Exception as exc:  # noqa: BLE001 -- any storage error: do not send
            raise LimiterUnavailable(f"rate limiter storage unreachable: {exc}") from exc
        return (token, 0.0, windows) if wait <= 0 else (None, wait, windows)

    def finish(self, token: str | None, windows: list[Window]) -> None:
        """The send of ``token`` is over (delivered or not): it counts from now on until a
        period has passed. An error leaves the entry in flight (counted longer: safe)."""
        if token is None:
            return
        try:
            self.store.finish(windows, token)
        except Exception as exc:  # noqa: BLE001 -- the slot stays held until it expires
            log.warning("rate limiter: could not record the end of a send (%s); its slot is "
                        "held until mail.lease has passed", exc)


def build_limiter(settings: Any, huey: Any) -> SendLimiter | None:
    """The queue's limiter, or None when neither ``mail.rate_limit`` nor
    ``mail.domain_rate_limits`` is set. Redis queues share the queue's client; an embedded
    ``sqlite:///`` queue gets a send log beside its file."""
    if not settings.rate_limit and not settings.domain_rate_limits:
        return None
    prefix = f"{settings.queue_name}:ratelimit"
    conn = getattr(huey.storage, "conn", None)
    filename = getattr(huey.storage, "filename", None)
    if settings.queue_url.startswith("sqlite:") and filename:
        store: Any = SqliteWindows(f"{filename}.ratelimit",
                                   timeout=max(settings.queue_timeout, 5.0))
    elif conn is not None and hasattr(conn, "register_script"):
        store = RedisWindows(conn)
    else:
        log.warning("mail.rate_limit: the queue's storage (%s) has no shared send log; the "
                    "limit is not applied", type(huey.storage).__name__)
        return None
    # a send in flight holds its slots for up to the delivery lease
    return SendLimiter(store, prefix, settings.rate_limit, settings.domain_rate_limits,
                       hold=settings.lease)
