"""``examcache-consumer CONFIG_URI``: run the Huey consumer for mail and the periodic jobs.

Reads the ``[app:main]`` section of the .ini (``CONFIG_URI#name`` for another app
section) without loading the web application, sets up logging from the ini's logging
sections, builds the queue from ``mail.queue_url`` and the outbox engine from
``mail.outbox_url`` (default: ``sqlalchemy.url``), relays what is due at start-up (mails
committed while the broker was down, attempts cut off by a killed consumer) and runs
Huey's consumer with ``mail.workers`` threads. Periodic jobs -- relay the outbox, purge
finished jobs -- run every ``mail.relay_interval`` seconds. The relay is also what runs
the slow retries (M3): past ``mail.retries`` a ``delayed`` mail has no entry in the
broker, only its outbox row's ``next_attempt_at``, and the relay pushes it when due.

With a Redis cache (``examcache.redis_url``) and ``examcache.invalidation_log`` on, it also
runs the relay of the durable invalidation log (G6) on ``examcache.invalidation_log_url``
(default ``sqlalchemy.url``), so logged invalidations are re-applied even when no web
process is running: :func:`~pyramid_examcache.cache.invalidation_log.start_relay`, a thread
with the log's database and a write-only Redis backend (no cache, no read lease).

``--app`` also loads the web application (``pyramid.paster.bootstrap``) so that the
subscribers it registers for :class:`~pyramid_examcache.mail.events.MailDelivered` and
:class:`~pyramid_examcache.mail.events.MailFailed` are called after each outcome.

SIGTERM and SIGINT stop it gracefully: workers finish the mail in hand (up to
``mail.shutdown_timeout`` seconds); a mail still in flight after that is handed back
to the outbox and re-queued.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

import plaster
from huey.consumer import Consumer, Scheduler
from pyramid.exceptions import ConfigurationError

from ..cache.invalidation_log import start_relay
from ..mail.queue import MailQueue
from ..mail.relay import relay
from ..settings import MailSettings, parse_cache_settings, parse_mail_settings

log = logging.getLogger("pyramid_examcache.consumer")

#: How often the scheduler looks for due retries (seconds); Huey's own minimum is 1 s.
SCHEDULER_TICK = 0.25


def read_settings(config_uri: str) -> dict[str, Any]:
    """The settings of the ini's app section, without importing the app (``here`` included)."""
    uri = plaster.parse_uri(config_uri)
    name = uri.fragment or "main"
    loader = plaster.get_loader(config_uri, protocols=["wsgi"])
    section = loader.get_settings(f"app:{name}")
    if not section:
        raise ConfigurationError(f"{uri.path}: no [app:{name}] section with settings")
    settings = dict(section)
    here = getattr(section, "global_conf", {}).get("here") or os.path.dirname(
        os.path.abspath(uri.path))
    settings.setdefault("here", here)
    return settings


def make_consumer(queue: MailQueue, settings: MailSettings, **options: Any) -> Consumer:
    """A Huey consumer whose scheduler ticks every 0.25 s and runs periodic jobs every
    ``relay_interval`` s, and where SIGINT and SIGTERM both mean "stop gracefully"."""

    class MailScheduler(Scheduler):
        periodic_task_seconds = settings.relay_interval

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.interval = SCHEDULER_TICK

    class MailConsumer(Consumer):
        scheduler_class = MailScheduler

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._signal_actions[signal.SIGINT] = (False, True)  # graceful as well

    options.setdefault("workers", settings.workers)
    return MailConsumer(queue.huey, periodic=True, max_delay=1.0,
                        shutdown_timeout=settings.shutdown_timeout,
                        graceful_signal="TERM", **options)


def _metrics_observer() -> Any:
    try:
        from ..metrics.mail import observe
    except ImportError:
        raise ConfigurationError("--metrics-port needs prometheus_client: "
                                 "pip install pyramid_examcache[metrics]") from None
    return observe


def serve_metrics(addr: str, port: int, queue: MailQueue, cache_relay: Any) -> None:
    """Prometheus metrics of this consumer: deliveries, retries, failures, latency, the
    outbox's jobs by state and, when it relays the invalidation log, the cache's."""
    from prometheus_client import start_http_server

    from ..metrics.cache import DurableLogCollector, instrument
    from ..metrics.exposition import scrape_registry
    from ..metrics.mail import OutboxCollector

    collectors: list[Any] = [OutboxCollector(lambda: queue.engine)]
    if cache_relay is not None:
        instrument(cache_relay)
        collectors.append(DurableLogCollector(cache_relay))
    start_http_server(port, addr=addr, registry=scrape_registry(collectors))
    log.info("metrics on http://%s:%d/metrics", addr, port)


def load_app(config_uri: str, queue: MailQueue) -> dict[str, Any]:
    """Bootstrap the web application; its registry receives the outcome events."""
    from pyramid.paster import bootstrap

    env = bootstrap(config_uri)
    queue.resources.notify = env["registry"].notify
    return env


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="examcache-consumer",
        description=("Run the pyramid_examcache mail consumer (Huey) configured from a "
                     "PasteDeploy .ini: delivers queued mail with retries, relays the outbox "
                     "and purges finished jobs. Uses the [app:main] section's mail.* settings "
                     "and mail.outbox_url (default sqlalchemy.url); the web app is not loaded."),
        epilog="SIGTERM/SIGINT stop gracefully, finishing or re-queueing the mail in hand.")
    parser.add_argument("config_uri", help="the .ini file, e.g. development.ini (or file.ini#name)")
    parser.add_argument("-w", "--workers", type=int, default=None,
                        help="worker threads (default: mail.workers)")
    parser.add_argument("--app", action="store_true",
                        help=("load the web application too (pyramid.paster.bootstrap), so "
                              "that its subscribers of MailDelivered / MailFailed are called"))
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="serve Prometheus metrics on this port (needs the metrics extra)")
    parser.add_argument("--metrics-addr", default="127.0.0.1",
                        help="address of the metrics server (default: 127.0.0.1)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    config_uri = args.config_uri
    try:
        plaster.setup_logging(config_uri)
    except Exception:  # noqa: BLE001 -- an ini without logging sections
        logging.basicConfig(level=logging.INFO)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO)
    try:
        raw = read_settings(config_uri)
        settings = parse_mail_settings(raw)
        cache_settings = parse_cache_settings(raw)
        observer = _metrics_observer() if args.metrics_port else None
        queue = MailQueue(settings, consumer=True, observer=observer)
        queue.engine  # noqa: B018 -- fail now when mail.outbox_url / sqlalchemy.url is missing
    except ConfigurationError as exc:
        print(f"examcache-consumer: {exc}", file=sys.stderr)
        return 2
    try:
        pushed = relay(queue.engine, queue.broker, settings)
        log.info("start-up relay: %d mail(s) pushed to the queue", pushed)
    except Exception:  # noqa: BLE001 -- the periodic relay retries
        log.exception("start-up relay failed; the periodic relay will retry")
    app_env = load_app(config_uri, queue) if args.app else None
    cache_relay = start_relay(cache_settings)
    if cache_relay is not None:
        log.info("relaying the cache invalidation log every %ss", cache_settings.relay_interval)
    if args.metrics_port:
        serve_metrics(args.metrics_addr, args.metrics_port, queue, cache_relay)
    options = {"workers": args.workers} if args.workers else {}
    consumer = make_consumer(queue, settings, **options)
    log.info("due retries are checked every %ss; relay and purge run every %ss",
             SCHEDULER_TICK, settings.relay_interval)
    try:
        consumer.run()
    finally:
        queue.close()
        if cache_relay is not None:
            cache_relay.close()
        if app_env is not None:
            app_env["closer"]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
