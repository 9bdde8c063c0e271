"""The one bridge between a ``transaction`` transaction and the work owed after its commit.

A :class:`Bridge` is a data manager (the shape of zope.sqlalchemy's ``datamanager.py``),
one per transaction, joined on first use and found again with ``txn.data``.  It holds
what the transaction owes once its database has committed: per cache policy the keys and
tags to invalidate (ORM flushes and ``request.cache.invalidate()``), the durable log rows
to mark applied and the "this transaction wrote" flag; and the mail jobs to push.  Its
``sortKey`` sorts after zope.sqlalchemy's, so it votes after the session has COMMITted; it
applies its work in ``tpc_finish`` and drops it on ``abort``/``tpc_abort``.  Created while
the transaction is already committing (zope.sqlalchemy's flush inside ``tpc_begin``), it
cannot join: it registers an after-commit hook instead and acts on its ``status``.

The request's transaction is ``request.tm``'s (pyramid_tm may run an explicit manager),
never the thread-global one, and never decided from ``environ['tm.active']`` alone
(pyramid_tm deletes it before ``commit()``).  Sessions without a transaction manager
(scripts, ``register(session, policy)``) keep using the session's own commit events
(:mod:`.cache.orm`).  The proof and every case: ``docs/design/transactions.md``.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from transaction.interfaces import NoTransaction, TransactionFailedError

log = logging.getLogger(__name__)

#: sorts after zope.sqlalchemy's data managers (``"~sqlalchemy:<id>"``): the database has
#: committed (one-phase: in its vote; two-phase: in its ``tpc_finish``) before ours runs
SORT_KEY = "~~pyramid_examcache"

_OPEN, _VOTING, _DONE = "open", "voting", "done"


class _Probe:
    """A synchronizer that only learns the manager's current transaction."""

    __slots__ = ("txn", "__weakref__")

    def __init__(self) -> None:
        self.txn = None

    def newTransaction(self, txn) -> None:  # noqa: N802 -- ISynchronizer
        self.txn = txn

    def beforeCompletion(self, txn) -> None:  # noqa: N802
        pass

    def afterCompletion(self, txn) -> None:  # noqa: N802
        pass


def _current(manager) -> Any:
    """``manager``'s transaction if it has one, without beginning one (a manager calls
    ``newTransaction`` on a synchronizer that registers while it has a transaction)."""
    probe = _Probe()
    manager.registerSynch(probe)
    manager.unregisterSynch(probe)
    return probe.txn


def open_transaction(request: Any, *, begin: bool = False) -> Any:
    """The transaction of ``request.tm``, or None (no ``request.tm``; an explicit manager
    with none begun).  Inside pyramid_tm's window (``tm.active``), or with ``begin=True``,
    ``request.tm.get()`` (a non-explicit manager begins one); elsewhere -- pyramid_tm's
    commit, a ``bootstrap()`` script, pshell -- the manager's current one, never a new one."""
    manager = getattr(request, "tm", None)
    if manager is None:
        return None
    environ = getattr(request, "environ", None)
    if begin or (environ is not None and environ.get("tm.active")):
        try:
            return manager.get()
        except NoTransaction:
            return None
    return _current(manager)


class CacheWork:
    """What one transaction owes one cache policy."""

    __slots__ = ("policy", "keys", "tags", "dirty", "rows", "trace")

    def __init__(self, policy: Any, trace: Any = None) -> None:
        self.policy = policy
        self.keys: set[str] = set()
        self.tags: set[str] = set()
        self.dirty = False
        self.rows: list[tuple[Any, str]] = []  # (engine, id) of durable log rows
        self.trace = trace  # the debug toolbar's record, usually None

    def add(self, keys, tags, row: tuple[Any, str] | None = None) -> None:
        self.keys.update(keys)
        self.tags.update(tags)
        if row is not None:
            self.rows.append(row)

    def apply(self) -> None:
        """Invalidate now; the log rows are marked applied only if that worked."""
        keys, tags, rows = self.keys, self.tags, self.rows
        self.keys, self.tags, self.rows = set(), set(), []
        if not (keys or tags):
            return
        applied = self.policy.invalidate_now(keys, tags)
        if applied:
            for engine, row_id in rows:
                self.policy.journal.applied(engine, row_id)
        if self.trace is not None:
            self.trace.invalidation("applied" if applied else "failed", keys, tags)

    def drop(self) -> None:
        if (self.keys or self.tags) and self.trace is not None:
            self.trace.invalidation("dropped", self.keys, self.tags)
        log.debug("transaction did not commit; %d cache invalidations dropped",
                  len(self.keys) + len(self.tags))
        self.keys, self.tags, self.rows = set(), set(), []


class Bridge:
    """The data manager of one transaction: cache work per policy, then mail pushes."""

    transaction_manager = None

    def __init__(self) -> None:
        self.state = _OPEN
        self.cache: dict[Any, CacheWork] = {}
        self.calls: list[tuple[Callable[..., None], tuple]] = []

    @property
    def committing(self) -> bool:
        """Is the transaction in its two-phase commit (so a session COMMIT seen now is the
        transaction's own, and this bridge's work is applied once it finishes)?"""
        return self.state == _VOTING

    def work(self, policy: Any, trace: Any = None) -> CacheWork:
        """The :class:`CacheWork` for ``policy`` (created on first use)."""
        work = self.cache.get(policy)
        if work is None:
            work = self.cache[policy] = CacheWork(policy, trace)
        elif work.trace is None:
            work.trace = trace
        return work

    def wrote(self, policy: Any) -> bool:
        work = self.cache.get(policy)
        return work is not None and work.dirty

    def on_commit(self, fn: Callable[..., None], *args: Any) -> None:
        """Call ``fn(*args)`` once the transaction has committed (never if it does not)."""
        self.calls.append((fn, args))

    # -- IDataManager --------------------------------------------------------------
    def sortKey(self) -> str:  # noqa: N802
        return SORT_KEY

    def abort(self, txn: Any) -> None:
        """An abort (or the rollback of a savepoint older than this bridge): drop the work
        and leave the transaction, so later work gets a fresh bridge."""
        self._end(False)
        try:
            if txn.data(_KEY) is self:
                txn.set_data(_KEY, None)
        except KeyError:
            pass

    def tpc_begin(self, txn: Any) -> None:
        if self.state == _OPEN:
            self.state = _VOTING

    def commit(self, txn: Any) -> None:
        pass

    def tpc_vote(self, txn: Any) -> None:
        pass

    def tpc_finish(self, txn: Any) -> None:
        self._end(True)

    def tpc_abort(self, txn: Any) -> None:
        self._end(False)

    def savepoint(self) -> _Savepoint:
        return _Savepoint(self)

    def after_commit(self, status: bool) -> None:
        """The after-commit hook of a bridge created while the transaction committed."""
        self._end(status)

    def _end(self, committed: bool) -> None:
        if self.state == _DONE:
            return
        self.state = _DONE
        calls, self.calls = self.calls, []
        for work in self.cache.values():
            try:
                work.apply() if committed else work.drop()
            except Exception:  # noqa: BLE001 -- never fail a committed transaction
                log.exception("applying the cache invalidations of a transaction failed")
        if not committed:
            return
        for fn, args in calls:
            try:
                fn(*args)
            except Exception:  # noqa: BLE001
                log.exception("after-commit work %r failed", fn)


class _Savepoint:
    """Rolls the explicit invalidations and the pending calls back to the savepoint (the
    ORM keys of a rolled-back savepoint are dropped by the session's own events)."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.cache = {p: (set(w.keys), set(w.tags), list(w.rows)) for p, w in bridge.cache.items()}
        self.calls = len(bridge.calls)

    def rollback(self) -> None:
        for policy, work in self.bridge.cache.items():
            keys, tags, rows = self.cache.get(policy, ((), (), ()))
            work.keys, work.tags, work.rows = set(keys), set(tags), list(rows)
        del self.bridge.calls[self.calls:]


#: the ``txn.data`` key of a transaction's bridge
_KEY = object()


def bridge_of(txn: Any, create: bool = True) -> Bridge | None:
    """``txn``'s bridge (joined to it when created), or None when ``txn`` has finished with
    it (committed or failed: nothing more can wait for its commit) or ``create`` is false.
    A transaction that is committing cannot be joined: the bridge hooks its end instead."""
    try:
        bridge = txn.data(_KEY)
    except KeyError:
        bridge = None
    if bridge is not None:
        return None if bridge.state == _DONE else bridge
    if not create:
        return None
    bridge = Bridge()
    try:
        txn.join(bridge)
    except ValueError:  # committing (zope.sqlalchemy's flush), or in an after-commit hook
        bridge.state = _VOTING
        txn.addAfterCommitHook(bridge.after_commit)
    except TransactionFailedError:
        return None
    txn.set_data(_KEY, bridge)
    return bridge


def request_bridge(request: Any, create: bool = False) -> Bridge | None:
    """The bridge of ``request``'s open transaction (:func:`open_transaction`), or None:
    then there is no transaction to wait for, and work is done at once."""
    txn = open_transaction(request)
    return None if txn is None else bridge_of(txn, create)


def transaction_wrote(txn: Any, policy: Any) -> bool:
    """Has ``txn`` (captured earlier with :func:`open_transaction`) written for ``policy``?
    False once the transaction is over and forgotten."""
    if txn is None:
        return False
    try:
        bridge = txn.data(_KEY)
    except KeyError:
        return False
    return bridge is not None and bridge.wrote(policy)
