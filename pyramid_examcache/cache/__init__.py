"""The cache half of the add-on: ``request.cache`` and the ``cache=`` view option."""
from __future__ import annotations

from pyramid.config import Configurator
from pyramid.interfaces import IRequest
from zope.interface import Interface

from ..settings import parse_cache_settings
from .backends import make_backend
from .policy import CachePolicy, RequestCache
from .views import cached, cached_view


class ICachePolicy(Interface):
    """Marker for the application's :class:`CachePolicy` utility."""


def get_policy(registry) -> CachePolicy:
    """The application's cache policy (after ``config.commit()``)."""
    return registry.getUtility(ICachePolicy)


def _request_cache(request) -> RequestCache:
    return RequestCache(get_policy(request.registry), request)


def includeme(config: Configurator) -> None:
    """Validate ``examcache.*``, build the backend once, add ``request.cache``
    and the ``cache=`` view option, hook SQLAlchemy flushes."""
    settings = parse_cache_settings(config.get_settings())

    def register() -> None:
        policy = CachePolicy(make_backend(settings), settings)
        config.registry.registerUtility(policy, ICachePolicy)

    config.action(("pyramid_examcache", "cache-policy"), register, order=-10)
    config.add_request_method(_request_cache, "cache", reify=True)
    config.add_view_deriver(cached_view)

    from . import orm

    orm.install()


__all__ = ["CachePolicy", "RequestCache", "ICachePolicy", "get_policy", "cached", "includeme"]
