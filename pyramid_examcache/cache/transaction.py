"""Bind cache invalidations to the request's transaction (G1).

Invalidations requested inside a pyramid_tm transaction are collected in a
:class:`TxnState` kept on the transaction itself (``txn.set_data``) and
applied by an after-commit hook, only when the commit succeeded.  On abort or
a failed commit they are dropped with the transaction: the data they would
have invalidated did not change.

We always join ``request.tm.get()`` (pyramid_tm may run an explicit manager),
never the thread-global ``transaction.get()``.
"""
from __future__ import annotations

import logging

from transaction.interfaces import NoTransaction

log = logging.getLogger(__name__)


class TxnState:
    """What one transaction owes the cache."""

    __slots__ = ("keys", "tags", "dirty")

    def __init__(self) -> None:
        self.keys: set[str] = set()
        self.tags: set[str] = set()
        self.dirty = False


def current_transaction(request):
    """The request's active transaction, or None when pyramid_tm manages none."""
    environ = getattr(request, "environ", None) or {}
    if not environ.get("tm.active"):
        return None
    try:
        return request.tm.get()
    except NoTransaction:
        return None


def transaction_state(request, policy, create: bool = False) -> TxnState | None:
    """The :class:`TxnState` of ``request``'s transaction for ``policy``."""
    txn = current_transaction(request)
    if txn is None:
        return None
    try:
        return txn.data(policy)
    except KeyError:
        if not create:
            return None
    state = TxnState()
    txn.set_data(policy, state)
    txn.addAfterCommitHook(_after_commit, args=(policy, state))
    return state


def _after_commit(status: bool, policy, state: TxnState) -> None:
    if not status:
        log.debug("transaction failed to commit; %d cache invalidations dropped",
                  len(state.keys) + len(state.tags))
        return
    policy.invalidate_now(state.keys, state.tags)
