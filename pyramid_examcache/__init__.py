"""pyramid_examcache: a Redis cache policy and a Huey-backed transactional mailer for Pyramid.

Usage::

    config.include('pyramid_tm')
    config.include('pyramid_examcache')

``includeme`` validates the ``examcache.*`` and ``mail.*`` settings (a bad
value raises ``ConfigurationError`` naming the setting), builds one cache
backend per application, adds ``request.cache`` and the ``cache=`` view
option, and ``request.mailer``.
"""
from __future__ import annotations

from importlib.metadata import version as _distribution_version

from pyramid.config import Configurator

from .cache.decorators import cache_on_arguments
from .cache.front import fast_path
from .cache.orm import register

__all__ = ["cache_on_arguments", "fast_path", "includeme", "register"]

#: the installed distribution's version (pyproject.toml's, through the package metadata)
__version__ = _distribution_version("pyramid_examcache")


def includeme(config: Configurator) -> None:
    config.include("pyramid_examcache.cache")
    config.include("pyramid_examcache.mail")
    config.include("pyramid_examcache.metrics")  # only with examcache.metrics_path
    config.include("pyramid_examcache.admin")  # only with examcache.admin_path
