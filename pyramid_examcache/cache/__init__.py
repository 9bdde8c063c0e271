"""The cache half of the add-on: ``request.cache`` and the ``cache=`` view option."""
from __future__ import annotations

from pyramid.config import Configurator
from pyramid.tweens import EXCVIEW, INGRESS
from zope.interface import Interface

from ..settings import CacheSettings, parse_cache_settings
from ..topology import parse as parse_url
from .backends import make_backend
from .csrf import watch_csrf_tokens
from .decorators import NotJSONArgument, cache_on_arguments
from .eligibility import NOTES_KEY, TABLE_KEY, EarlyTable, off_reason
from .invalidation_log import attach_journal
from .orm import install, register
from .policy import CachePolicy, RequestCache
from .vary import add_cache_vary
from .views import cached, cached_view, check_routes


class ICachePolicy(Interface):
    """Marker for the application's :class:`CachePolicy` utility."""


def get_policy(registry) -> CachePolicy:
    """The application's cache policy (after ``config.commit()``)."""
    return registry.getUtility(ICachePolicy)


def build_policy(settings: CacheSettings) -> CachePolicy:
    """The policy for validated settings: its backend and, for a Redis backend
    with ``examcache.invalidation_log`` on, the durable log and its relay thread.
    Used by ``includeme``; ``examcache-consumer`` runs the relay alone
    (:func:`.invalidation_log.start_relay`)."""
    policy = CachePolicy(make_backend(settings), settings)
    if settings.invalidation_log and parse_url(settings.redis_url).kind != "memory":
        attach_journal(policy, settings)
    return policy


def _request_cache(request) -> RequestCache:
    return RequestCache(get_policy(request.registry), request)


def includeme(config: Configurator) -> None:
    """Validate ``examcache.*``, build the backend once, add ``request.cache``,
    the ``cache=`` view option and the early-hit tween (:mod:`.early`); with a
    Redis backend, the durable invalidation log's relay.  Sessions opt in to
    ORM invalidation with :func:`register`."""
    settings = parse_cache_settings(config.get_settings())
    install(settings.require_registration)  # also warns about sessions never registered

    def register() -> None:
        config.registry.registerUtility(build_policy(settings), ICachePolicy)

    config.action(("pyramid_examcache", "cache-policy"), register, order=-10)
    config.add_request_method(_request_cache, "cache", reify=True)
    config.add_directive("add_cache_vary", add_cache_vary)
    config.add_view_deriver(cached_view)
    # after every view, route and CSRF policy of the configuration (default order 0)
    config.action(None, check_routes, args=(config.registry,), order=10)
    config.action(None, watch_csrf_tokens, args=(config.registry,), order=10)
    # early hits: decided once the policy exists, before any view is derived (order 0)
    config.action(None, _decide_early_hits, args=(config.registry,), order=-5)
    if settings.early_hits and settings.enabled:
        # (early.py is imported only here.)  Under the debug toolbar (which records the
        # requests it shows) and over pyramid_tm; without them, under INGRESS and over
        # excview.  Added here, not at commit: an implicit tween order follows the order
        # tweens were added in.  Its factory adds nothing unless _decide_early_hits did.
        config.add_tween("pyramid_examcache.cache.early.early_hits_tween_factory",
                         under=("pyramid_debugtoolbar.toolbar_tween_factory", INGRESS),
                         over=("pyramid_tm.tm_tween_factory", EXCVIEW))


def _decide_early_hits(registry) -> None:
    """Early hits only where the backend can answer without I/O (the cache= deriver
    then notes its views, :func:`.eligibility.note_view`); else record why not."""
    policy = get_policy(registry)
    reason = off_reason(policy.settings, policy.backend)
    if reason is None:
        registry[NOTES_KEY] = {}
    else:
        registry[TABLE_KEY] = EarlyTable({}, {}, reason)


__all__ = ["CachePolicy", "RequestCache", "ICachePolicy", "NotJSONArgument", "build_policy",
           "cache_on_arguments", "get_policy", "cached", "includeme", "register"]
