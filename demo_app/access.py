"""Who may read the metrics on the site's listener: ``demo.metrics_allow``.

``examcache.metrics_path`` (``/metrics``) runs database queries on every scrape and
describes the site's traffic, so it is not for the public.  A request for it from a
client address outside ``demo.metrics_allow`` (default: this host, ``127.0.0.0/8
::1/128``) is answered exactly like a path that does not exist: 404.

The guard is a tween under Pyramid's exception-view tween (so the 404 is the
application's not-found view, as for any unknown path), and it compares the path
Pyramid routes on (``request.path_info``) with the route's fixed pattern.  It is
not a ``ContextFound`` subscriber: an application subscribing to ``ContextFound`` gets
no early hits (pyramid_examcache warns, naming the subscriber's event), because early
hits skip routing.

The client address is ``REMOTE_ADDR`` as the WSGI server set it, never a header the
client writes.  Behind a reverse proxy on this host every request comes from
127.0.0.1: set waitress's ``trusted_proxy`` / ``trusted_proxy_headers =
x-forwarded-for`` (production.ini shows how) so that REMOTE_ADDR is the real client
again -- or have the proxy refuse the metrics path itself.
"""
from __future__ import annotations

import ipaddress

from pyramid.httpexceptions import HTTPNotFound
from pyramid.tweens import EXCVIEW

from .settings import get_demo_settings

#: the setting naming the metrics route's path (pyramid_examcache)
METRICS_PATH = "examcache.metrics_path"


def client_address(request) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``REMOTE_ADDR`` as an address (``[v6]`` brackets, zone ids and IPv4-mapped IPv6
    addresses understood); ``None`` when missing or not an address."""
    raw = (request.remote_addr or "").strip()
    if raw.startswith("[") and raw.endswith("]"):
        raw = raw[1:-1]
    try:
        address = ipaddress.ip_address(raw.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def metrics_allowed(request) -> bool:
    """May this request's client read the metrics (``demo.metrics_allow``)?"""
    address = client_address(request)
    return address is not None and any(
        address in network for network in get_demo_settings(request).metrics_allow)


def metrics_guard_tween_factory(handler, registry):
    """404 for ``examcache.metrics_path`` unless the client may read the metrics."""
    path = str(registry.settings.get(METRICS_PATH) or "").strip()

    def metrics_guard_tween(request):
        if request.path_info == path and not metrics_allowed(request):
            raise HTTPNotFound(request.path_info)  # the same answer as any unknown path
        return handler(request)

    return metrics_guard_tween


def includeme(config) -> None:
    if str(config.get_settings().get(METRICS_PATH) or "").strip():
        config.add_tween("demo_app.access.metrics_guard_tween_factory", under=EXCVIEW)
