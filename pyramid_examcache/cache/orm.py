"""Automatic invalidation from SQLAlchemy flushes.

A mapped class declares the cache keys and tags its rows affect as templates
filled from the row's attributes::

    class Question(Base):
        __cache_keys__ = ("exam:{exam_id}:questions", "question:{id}")
        __cache_tags__ = ("exam:{exam_id}",)

Every insert, update and delete flushed in a session queues those keys for
invalidation; for an update, keys are computed with the old *and* the new
values of the changed attributes (a question moved to another exam
invalidates both exams).  The invalidation happens only after the commit:

* a session built the cookiecutter way (``session_factory(info={"request":
  request})`` and registered with zope.sqlalchemy) hands the keys to
  ``request.cache.invalidate()``, i.e. to the request's transaction (G1), and
  marks the transaction dirty so the request neither reads nor fills the cache
  afterwards;
* a session bound with :func:`bind` (scripts, workers) applies them on the
  session's own ``after_commit`` and drops them on rollback.

Bulk ``UPDATE``/``DELETE`` statements through the ORM cannot name their rows;
they only mark the transaction dirty: invalidate those keys yourself.
"""
from __future__ import annotations

import itertools
import logging
from typing import Any, Iterable

from sqlalchemy import event, inspect
from sqlalchemy.orm import Session

from .templates import fields as _fields, fill

log = logging.getLogger(__name__)

_PENDING = "examcache.pending"
_POLICY = "examcache.policy"
_installed = False


def install() -> None:
    """Listen on every SQLAlchemy session (idempotent)."""
    global _installed
    if _installed:
        return
    event.listen(Session, "after_flush", _after_flush)
    event.listen(Session, "after_commit", _after_commit)
    event.listen(Session, "after_soft_rollback", _after_rollback)
    event.listen(Session, "do_orm_execute", _on_execute)
    _installed = True


def bind(session: Session, policy) -> Session:
    """Make a session without a request invalidate through ``policy`` on commit."""
    session.info[_POLICY] = policy
    return session


def keys_for(obj: Any, *, include_old: bool = True) -> tuple[set[str], set[str]]:
    """The keys and tags ``obj`` declares, for its current and previous values."""
    cls = type(obj)
    key_tpls = getattr(cls, "__cache_keys__", ())
    tag_tpls = getattr(cls, "__cache_tags__", ())
    if not key_tpls and not tag_tpls:
        return set(), set()
    state = inspect(obj)
    names = {n for t in itertools.chain(key_tpls, tag_tpls) for n in _fields(t)}
    current: dict[str, Any] = {}
    choices: dict[str, list[Any]] = {}
    for name in names:
        current[name] = getattr(obj, name, None)
        values = [current[name]]
        if include_old and name in state.attrs:
            history = state.attrs[name].history
            values += [v for v in history.deleted if v is not None and v != current[name]]
        choices[name] = values

    def expand(templates: Iterable[str]) -> set[str]:
        out = set()
        for tpl in templates:
            fields = _fields(tpl)
            for combo in itertools.product(*(choices[n] for n in fields)):
                values = dict(zip(fields, combo))
                if any(v is None for v in values.values()):
                    continue
                out.add(fill(tpl, values))
        return out

    return expand(key_tpls), expand(tag_tpls)


def _target(session: Session):
    request = session.info.get("request")
    cache = getattr(request, "cache", None) if request is not None else None
    return cache


def _after_flush(session: Session, flush_context) -> None:
    keys: set[str] = set()
    tags: set[str] = set()
    wrote = False
    for obj in itertools.chain(session.new, session.dirty, session.deleted):
        if obj in session.dirty and not session.is_modified(obj, include_collections=False):
            continue
        wrote = True
        k, t = keys_for(obj)
        keys |= k
        tags |= t
    if not wrote:
        return
    cache = _target(session)
    if cache is not None:
        if keys or tags:
            cache.invalidate(*keys, tags=tags)
        else:
            cache.mark_dirty()
        return
    if _POLICY in session.info:
        pending = session.info.setdefault(_PENDING, (set(), set()))
        pending[0].update(keys)
        pending[1].update(tags)


def _after_commit(session: Session) -> None:
    pending = session.info.pop(_PENDING, None)
    policy = session.info.get(_POLICY)
    if pending and policy is not None:
        policy.invalidate_now(pending[0], pending[1])


def _after_rollback(session: Session, previous_transaction) -> None:
    if previous_transaction.parent is None:
        session.info.pop(_PENDING, None)


def _on_execute(state) -> None:
    if state.is_update or state.is_delete or state.is_insert:
        cache = _target(state.session)
        if cache is not None:
            cache.mark_dirty()
