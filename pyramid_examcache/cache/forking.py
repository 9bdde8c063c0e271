"""Fork and exit hooks that do not keep their object alive.

A pre-fork server (gunicorn, a waitress master that forks) builds the
application once and forks workers: every object with a thread, a lock or a
socket must start its own in the child.  Each such object registers its *own*
``_after_fork`` method here; no object resets another's fields.  The hooks hold
the method weakly: an object that is gone is skipped.
"""
from __future__ import annotations

import atexit
import os
import weakref
from collections.abc import Callable


def _weak_call(method: Callable[[], object]) -> Callable[[], None]:
    ref = weakref.WeakMethod(method)

    def call() -> None:
        bound = ref()
        if bound is not None:
            bound()

    return call


def after_fork_in_child(method: Callable[[], object]) -> None:
    """Run the bound ``method`` in every forked child while its object lives."""
    os.register_at_fork(after_in_child=_weak_call(method))


def at_exit(method: Callable[[], object]) -> None:
    """Run the bound ``method`` at interpreter exit while its object lives."""
    atexit.register(_weak_call(method))
