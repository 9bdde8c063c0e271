"""Automatic invalidation from SQLAlchemy flushes, applied at the real COMMIT.

A mapped class declares the cache keys and tags its rows affect as templates
filled from the row's attributes::

    class Question(Base):
        __cache_keys__ = ("exam:{exam_id}:questions", "question:{id}")
        __cache_tags__ = ("exam:{exam_id}",)

A session opts in with :func:`register` (as with ``zope.sqlalchemy.register``)::

    dbsession = session_factory()
    zope.sqlalchemy.register(dbsession, transaction_manager=request.tm)
    pyramid_examcache.register(dbsession, request)        # or a CachePolicy in scripts

Flushes (``before_flush``/``after_flush``) collect the keys of every insert, update
and delete of a declaring model (for an update, old *and* new values) in ``session.info``,
tagged with the innermost SQLAlchemy transaction, so a rolled-back savepoint drops its
own (``after_soft_rollback``), and mark the request's transaction dirty (G2b).  At the
outermost ``before_commit`` one durable log row with the keys (and, when the request's
transaction is committing, its explicit ``request.cache.invalidate()`` keys) is written
in the same database transaction (G6, :mod:`.invalidation_log`).  At ``after_commit``
the keys go to the request transaction's bridge (:mod:`pyramid_examcache.transaction`),
which applies them after the whole commit; a session that commits by itself (scripts,
no transaction manager) applies them at once (G1).  Proof: ``docs/design/transactions.md``.

Bulk ``UPDATE``/``DELETE`` statements and ``text()`` DML cannot name their rows: they only
mark the transaction dirty -- call ``request.cache.invalidate()`` for what they change (it
joins the same commit and log row). ``session.connection()`` statements are not seen at all.

A session *never registered* that writes a declaring model is a forgotten ``register()``: a
WARNING once per session, or :class:`UnregisteredSession` at every such flush with
``examcache.require_registration = true`` (which app decides: :func:`_require_registration`).
"""
from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable
from typing import Any

from sqlalchemy import event, inspect
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import ObjectDeletedError
from sqlalchemy.sql.elements import TextClause

from ..transaction import CacheWork, request_bridge
from .templates import fields as _fields
from .templates import fill

log = logging.getLogger(__name__)

_STATE = "examcache"
#: ``session.info`` marker: this unregistered session's warning was logged
_WARNED = "examcache.unregistered_warned"
_installed = False
#: examcache.require_registration of each app configured (includeme) in this process
_apps: list[bool] = []
#: first words of a ``text()`` statement that does not write
_READ_ONLY = ("select", "show", "explain", "values", "pragma")


class _SessionState:
    """What one registered session owes the cache (kept in ``session.info``)."""

    __slots__ = ("policy", "cache", "pending", "row")

    def __init__(self, policy, cache) -> None:
        self.policy = policy
        self.cache = cache  # the request's RequestCache, or None
        self.pending: list[tuple[Any, set[str], set[str]]] = []  # (SessionTransaction, keys, tags)
        self.row: tuple[Any, str] | None = None  # (engine, log row id) of this commit

    def collected(self) -> tuple[set[str], set[str]]:
        keys: set[str] = set()
        tags: set[str] = set()
        for _, k, t in self.pending:
            keys |= k
            tags |= t
        return keys, tags

    def reset(self) -> None:
        self.pending = []
        self.row = None

    def bridge(self, create: bool = False):
        """The bridge of the request's open transaction, if any."""
        return None if self.cache is None else request_bridge(self.cache.request, create)


class UnregisteredSession(RuntimeError):
    """A session never passed to ``pyramid_examcache.register()`` flushed a change to a
    model declaring ``__cache_keys__`` while ``examcache.require_registration`` is true."""


def install(require_registration: bool | None = None) -> None:
    """Install the session event listeners (idempotent).  ``includeme`` passes the app's
    ``examcache.require_registration``, which decides for flushes outside any app's
    registry when the process has configured only this app."""
    global _installed
    if require_registration is not None:
        _apps.append(require_registration)
    if _installed:
        return
    event.listen(Session, "before_flush", _before_flush)
    event.listen(Session, "after_flush", _after_flush)
    event.listen(Session, "before_commit", _before_commit)
    event.listen(Session, "after_commit", _after_commit)
    event.listen(Session, "after_soft_rollback", _after_soft_rollback)
    event.listen(Session, "do_orm_execute", _on_execute)
    _installed = True


def register(session: Session, target) -> Session:
    """Opt ``session`` in to commit-time invalidation.

    ``target`` is a request (its ``request.cache``: the request's transaction is
    marked dirty by writes, and its explicit invalidations join this session's
    commit), a ``request.cache``, or a :class:`~.policy.CachePolicy` (scripts,
    workers).  Returns ``session``.
    """
    from .policy import CachePolicy, RequestCache

    install()
    if isinstance(target, CachePolicy):
        policy, cache = target, None
    elif isinstance(target, RequestCache):
        policy, cache = target.policy, target
    else:
        cache = getattr(target, "cache", None)
        if not isinstance(cache, RequestCache):
            raise TypeError("register(session, target): target must be a request with "
                            "request.cache, a RequestCache or a CachePolicy, "
                            f"got {type(target).__name__}")
        policy = cache.policy
    session.info[_STATE] = _SessionState(policy, cache)
    return session


def _values(obj: Any, name: str, include_old: bool, load: bool) -> list[Any]:
    state = inspect(obj)
    if load:
        current = getattr(obj, name, None)
    elif name in state.dict:
        current = state.dict[name]
    else:  # expired and not to be loaded (the row is gone): the identity, if it is a key column
        current = None
        mapper = state.mapper
        if state.identity is not None:
            for column, value in zip(mapper.primary_key, state.identity, strict=True):
                prop = mapper.get_property_by_column(column)
                if prop.key == name:
                    current = value
        if current is None:
            return []
    values = [current]
    if include_old and name in state.attrs:
        history = state.attrs[name].history
        values += [v for v in history.deleted if v is not None and v != current]
    return values


def keys_for(obj: Any, *, include_old: bool = True, load: bool = True) -> tuple[set[str], set[str]]:
    """The keys and tags ``obj`` declares, for its current and previous values
    (``load=False``: only what is loaded, for rows already deleted)."""
    cls = type(obj)
    key_tpls = getattr(cls, "__cache_keys__", ())
    tag_tpls = getattr(cls, "__cache_tags__", ())
    if not key_tpls and not tag_tpls:
        return set(), set()
    names = {n for t in itertools.chain(key_tpls, tag_tpls) for n in _fields(t)}
    choices = {name: _values(obj, name, include_old, load) for name in names}

    def expand(templates: Iterable[str]) -> set[str]:
        out = set()
        for tpl in templates:
            fields = _fields(tpl)
            for combo in itertools.product(*(choices[n] for n in fields)):
                values = dict(zip(fields, combo, strict=True))
                if any(v is None for v in values.values()):
                    continue
                out.add(fill(tpl, values))
        return out

    return expand(key_tpls), expand(tag_tpls)


def _innermost(session: Session):
    return session.get_nested_transaction() or session.get_transaction()


def _collect(st: _SessionState, session: Session, keys: set[str], tags: set[str]) -> None:
    if keys or tags:
        st.pending.append((_innermost(session), keys, tags))


def _declares(cls: type) -> bool:
    return bool(getattr(cls, "__cache_keys__", None) or getattr(cls, "__cache_tags__", None))


def _require_registration() -> bool:
    """``examcache.require_registration`` of the app whose registry is current (a request,
    ``bootstrap()``); elsewhere that of the process's only app if it configured just one,
    else False (a warning): several apps in one process cannot be told apart there."""
    from pyramid.threadlocal import get_current_registry

    from . import ICachePolicy

    policy = get_current_registry().queryUtility(ICachePolicy)
    if policy is not None:
        return policy.settings.require_registration
    return len(_apps) == 1 and _apps[0]


def _unregistered(session: Session, cls: type) -> None:
    """A forgotten ``register()``: warn once per session, or raise when required."""
    strict = _require_registration()
    name = f"{cls.__module__}.{cls.__qualname__}"
    message = (f"a SQLAlchemy session that was never passed to pyramid_examcache.register() "
               f"wrote {name}, which declares __cache_keys__/__cache_tags__: its cache keys "
               f"are not invalidated on commit and the old values are served until their "
               f"TTL. Call pyramid_examcache.register(session, request) next to "
               f"zope.sqlalchemy.register(session, ...)")
    if strict:
        raise UnregisteredSession(f"{message} (examcache.require_registration = true)")
    session.info[_WARNED] = True
    log.warning("%s. Logged once per session; examcache.require_registration = true makes "
                "it an error.", message)


def _check_unregistered(session: Session) -> None:
    for obj in itertools.chain(session.new, session.deleted):
        if _declares(type(obj)):
            return _unregistered(session, type(obj))
    for obj in session.dirty:
        if _declares(type(obj)) and session.is_modified(obj, include_collections=False):
            return _unregistered(session, type(obj))


def _before_flush(session: Session, flush_context, instances) -> None:
    st = session.info.get(_STATE)
    if st is None:
        if _WARNED not in session.info:
            _check_unregistered(session)
        return
    if not session.deleted:
        return
    # the rows still exist: attributes expired before a delete can be loaded now
    keys: set[str] = set()
    tags: set[str] = set()
    for obj in session.deleted:
        try:
            k, t = keys_for(obj)
        except ObjectDeletedError:
            k, t = keys_for(obj, load=False)
        keys |= k
        tags |= t
    _collect(st, session, keys, tags)


def _after_flush(session: Session, flush_context) -> None:
    st = session.info.get(_STATE)
    if st is None:
        return
    keys: set[str] = set()
    tags: set[str] = set()
    wrote = False
    for obj in itertools.chain(session.new, session.dirty):
        if obj in session.dirty and not session.is_modified(obj, include_collections=False):
            continue
        wrote = True
        k, t = keys_for(obj)
        keys |= k
        tags |= t
    for obj in session.deleted:  # rows deleted by this flush (cascades included): no loading
        wrote = True
        k, t = keys_for(obj, load=False)
        keys |= k
        tags |= t
    if not wrote:
        return
    _collect(st, session, keys, tags)
    if st.cache is not None:
        st.cache.mark_dirty()


def _before_commit(session: Session) -> None:
    st = session.info.get(_STATE)
    if st is None or session.in_nested_transaction():
        return
    session.flush()  # commit() flushes after this event: collect that flush's keys now
    keys, tags = st.collected()
    bridge = st.bridge()
    if bridge is not None and bridge.committing:  # this COMMIT is the transaction's
        work = bridge.work(st.policy)
        keys |= work.keys
        tags |= work.tags
    journal = st.policy.journal
    if journal is not None and (keys or tags):
        conn = session.connection()
        row_id = journal.record(conn, keys, tags)
        if row_id is not None:
            st.row = (conn.engine, row_id)


def _after_commit(session: Session) -> None:
    st = session.info.get(_STATE)
    if st is None:
        return
    keys, tags = st.collected()
    row = st.row
    st.reset()
    if not (keys or tags or row):
        return
    trace = st.cache.trace if st.cache is not None else None
    bridge = st.bridge(create=True)
    if bridge is not None and bridge.committing:
        # inside the transaction's commit (zope.sqlalchemy's vote): applied when it ends
        bridge.work(st.policy, trace).add(keys, tags, row)
        return
    work = CacheWork(st.policy, trace)  # the session committed by itself: apply now
    work.add(keys, tags, row)
    work.apply()


def _after_soft_rollback(session: Session, previous_transaction) -> None:
    st = session.info.get(_STATE)
    if st is None:
        return
    if not previous_transaction.nested:
        st.reset()
        return

    def inside(txn) -> bool:
        while txn is not None:
            if txn is previous_transaction:
                return True
            txn = txn.parent
        return False

    st.pending = [entry for entry in st.pending if not inside(entry[0])]


def _on_execute(state) -> None:
    st = state.session.info.get(_STATE)
    if st is None:
        if (state.is_update or state.is_delete or state.is_insert) and state.bind_mapper \
                is not None and _declares(state.bind_mapper.class_) \
                and _WARNED not in state.session.info:
            _unregistered(state.session, state.bind_mapper.class_)
        return
    if st.cache is None:
        return
    if state.is_update or state.is_delete or state.is_insert:
        st.cache.mark_dirty()
        return
    statement = state.statement
    if isinstance(statement, TextClause):
        first = statement.text.lstrip().split(None, 1)[:1]
        if not first or first[0].lower() not in _READ_ONLY:
            st.cache.mark_dirty()
