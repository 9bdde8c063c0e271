"""Test-only ways to make a request's transaction fail *after* the view wrote.

``include_failure_hooks(config)`` adds a tween between pyramid_tm and the
exception view: a request with ``X-Test-Fail: after-view`` raises once the
view has returned (pyramid_tm aborts and re-raises), one with
``X-Test-Fail: commit`` joins a data manager that votes no, so the commit
itself fails (pyramid_tm renders the error through the exception view).
Never part of the real application.
"""
from __future__ import annotations

from pyramid.tweens import EXCVIEW


class FailingCommit(Exception):
    pass


class FailAfterView(Exception):
    pass


class VoteNo:
    """A data manager that fails the two-phase commit at ``tpc_vote``; it sorts
    before zope.sqlalchemy's, so the database transaction is rolled back."""

    transaction_manager = None

    def __init__(self, manager) -> None:
        self.transaction_manager = manager

    def sortKey(self) -> str:
        return "!examcache-test-vote-no"

    def abort(self, txn) -> None:
        pass

    def tpc_begin(self, txn) -> None:
        pass

    def commit(self, txn) -> None:
        pass

    def tpc_vote(self, txn) -> None:
        raise FailingCommit("this commit fails on purpose")

    def tpc_finish(self, txn) -> None:  # pragma: no cover -- never reached
        pass

    def tpc_abort(self, txn) -> None:
        pass


def failure_tween_factory(handler, registry):
    def failure_tween(request):
        mode = request.headers.get("X-Test-Fail")
        if mode == "commit":
            request.tm.get().join(VoteNo(request.tm))
        response = handler(request)
        if mode == "after-view":
            raise FailAfterView("the transaction fails after the view wrote, on purpose")
        return response

    return failure_tween


def include_failure_hooks(config) -> None:
    config.add_tween("tests.demo.hooks.failure_tween_factory",
                     under="pyramid_tm.tm_tween_factory", over=EXCVIEW)
