"""The ``examcache.metrics_path`` route of a web application."""
from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from pyramid.config import Configurator
from pyramid.response import Response

from .exposition import exposition

ROUTE = "examcache.metrics"


def _database_collectors(registry: Any) -> list[Any]:
    from ..cache import ICachePolicy
    from ..mail import IMailQueue
    from .cache import DurableLogCollector
    from .mail import OutboxCollector

    collectors: list[Any] = []
    policy = registry.queryUtility(ICachePolicy)
    if policy is not None:
        collectors.append(DurableLogCollector(policy))
    queue = registry.queryUtility(IMailQueue)
    if queue is not None:
        collectors.append(OutboxCollector(lambda: queue.engine))
    return collectors


def metrics_view(request: Any) -> Response:
    body = exposition(_database_collectors(request.registry))
    response = Response(body=body, content_type=CONTENT_TYPE_LATEST.split(";")[0],
                        charset="utf-8")
    response.cache_control = "no-store"
    return response


def add_metrics_view(config: Configurator, path: str) -> None:
    from ..cache import ICachePolicy
    from .cache import instrument

    def instrument_policy() -> None:
        policy = config.registry.queryUtility(ICachePolicy)
        if policy is not None:
            instrument(policy)

    config.action(("pyramid_examcache", "metrics"), instrument_policy, order=10)
    config.add_route(ROUTE, path)
    config.add_view(metrics_view, route_name=ROUTE, request_method=("GET", "HEAD"))
