"""One registry to scrape: this process's metrics (or every process's, in prometheus_client's
multiprocess mode) plus collectors that read the database at scrape time."""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess

log = logging.getLogger(__name__)


def process_registry() -> CollectorRegistry:
    """The default registry, or, with ``PROMETHEUS_MULTIPROC_DIR`` set, a registry that sums
    the values every process wrote there (prometheus_client's multiprocess mode)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


class _Guarded:
    """A database collector that never fails the scrape (the database may be down)."""

    def __init__(self, collector: Any) -> None:
        self.collector = collector

    def collect(self):
        try:
            yield from list(self.collector.collect())
        except Exception:  # noqa: BLE001
            log.warning("metrics: %s failed; its metrics are left out of this scrape",
                        type(self.collector).__name__, exc_info=True)


class Combined:
    """A collector yielding the process metrics and the database collectors."""

    def __init__(self, database_collectors: Iterable[Any]) -> None:
        self.database = [_Guarded(c) for c in database_collectors]

    def collect(self):
        yield from process_registry().collect()
        for collector in self.database:
            yield from collector.collect()


def scrape_registry(database_collectors: Iterable[Any]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Combined(database_collectors))
    return registry


def exposition(database_collectors: Iterable[Any]) -> bytes:
    return generate_latest(scrape_registry(database_collectors))
