"""Bind cache invalidations to the request's transaction (G1).

Invalidations requested inside a pyramid_tm transaction are collected in a
:class:`TxnState` kept on the transaction itself (``txn.set_data``) and
applied by an after-commit hook, only when the commit succeeded.  On abort or
a failed commit they are dropped with the transaction: the data they would
have invalidated did not change.

We always join ``request.tm`` (pyramid_tm may run an explicit manager), never
the thread-global ``transaction.get()``.

"Is there a transaction?" is answered from the transaction itself, never from
``environ['tm.active']`` alone: pyramid_tm deletes that key *before* it calls
``commit()``, and zope.sqlalchemy flushes inside the commit (``tpc_begin``), so
code running in that flush -- or in a before-commit hook -- would otherwise see
"no transaction" and invalidate before the database has committed.  A
transaction that is active, committing or doomed gets the invalidation as an
after-commit hook (applied only if the commit succeeds); one that has
committed, or none at all, means "apply now".
"""
from __future__ import annotations

import logging

from transaction._transaction import Status
from transaction.interfaces import NoTransaction

from ..trace import trace_of

log = logging.getLogger(__name__)


class TxnState:
    """What one transaction owes the cache."""

    __slots__ = ("keys", "tags", "dirty", "trace")

    def __init__(self, trace=None) -> None:
        self.keys: set[str] = set()
        self.tags: set[str] = set()
        self.dirty = False
        self.trace = trace  # the debug toolbar's (pyramid_examcache.trace), usually None


_OPEN = frozenset({Status.ACTIVE, Status.COMMITTING, Status.DOOMED})


def current_transaction(request):
    """The request's transaction if it is still open (active, committing or
    doomed), else None."""
    environ = getattr(request, "environ", None)
    if environ is not None and environ.get("tm.active"):
        try:
            return request.tm.get()
        except NoTransaction:
            return None
    manager = getattr(request, "tm", None)
    if manager is None:
        return None
    # Outside pyramid_tm's window (inside its commit, or a script's ``with
    # request.tm:``): look at the manager's transaction without creating one.
    inner = getattr(manager, "manager", manager)  # ThreadTransactionManager wraps one
    txn = getattr(inner, "_txn", None)
    if txn is not None and txn.status in _OPEN:
        return txn
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
    state = TxnState(trace_of(request))
    txn.set_data(policy, state)
    txn.addAfterCommitHook(_after_commit, args=(policy, state))
    return state


def _after_commit(status: bool, policy, state: TxnState) -> None:
    if not status:
        log.debug("transaction failed to commit; %d cache invalidations dropped",
                  len(state.keys) + len(state.tags))
        if state.trace is not None and (state.keys or state.tags):
            state.trace.invalidation("dropped", state.keys, state.tags)
        return
    applied = policy.invalidate_now(state.keys, state.tags)
    if state.trace is not None and (state.keys or state.tags):
        state.trace.invalidation("applied" if applied else "failed", state.keys, state.tags)
