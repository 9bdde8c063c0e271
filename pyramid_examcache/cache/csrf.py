"""Responses that hold a CSRF token are never stored, whatever the storage policy.

Pyramid hands out CSRF tokens through the registered ``ICSRFStoragePolicy``
(``request.session`` for the session policies, a cookie for
``CookieCSRFStoragePolicy``, or the application's own).  A body that embeds a
token belongs to one visitor; with the cookie policy a returning visitor's token
comes from their cookie and no ``Set-Cookie`` marks the response.  So the policy
is wrapped: any request that obtains, makes or checks a token is marked private
(:func:`.http.mark_private`) and its response is not stored.
"""
from __future__ import annotations

from pyramid.interfaces import ICSRFStoragePolicy
from zope.interface import implementer

from .http import mark_private

_WHY = "the view obtained a CSRF token (a per-visitor value)"


@implementer(ICSRFStoragePolicy)
class WatchedCSRFStoragePolicy:
    """An ``ICSRFStoragePolicy`` that marks the requests it serves, then delegates."""

    def __init__(self, policy) -> None:
        self.policy = policy

    def new_csrf_token(self, request):
        mark_private(request, _WHY)
        return self.policy.new_csrf_token(request)

    def get_csrf_token(self, request):
        mark_private(request, _WHY)
        return self.policy.get_csrf_token(request)

    def check_csrf_token(self, request, token):
        return self.policy.check_csrf_token(request, token)

    def __getattr__(self, name):  # the wrapped policy's own extras
        return getattr(self.policy, name)


def unwrap(policy):
    """The application's own CSRF storage policy behind a :class:`WatchedCSRFStoragePolicy`."""
    return policy.policy if isinstance(policy, WatchedCSRFStoragePolicy) else policy


def watch_csrf_tokens(registry) -> None:
    """Wrap the registered CSRF storage policy (an action run after the
    application's ``set_csrf_storage_policy``)."""
    policy = registry.queryUtility(ICSRFStoragePolicy)
    if policy is not None and not isinstance(policy, WatchedCSRFStoragePolicy):
        registry.registerUtility(WatchedCSRFStoragePolicy(policy), ICSRFStoragePolicy)
