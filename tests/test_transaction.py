"""The transaction bridge (``pyramid_examcache.transaction``): one data manager per
transaction, savepoints, managers outside pyramid_tm's window, sessions that commit alone."""
from __future__ import annotations

import transaction
from pyramid.testing import DummyRequest
from sqlalchemy import Column, Integer, String, create_engine
from sqlalchemy.orm import declarative_base, sessionmaker

from pyramid_examcache.cache import orm
from pyramid_examcache.cache.backends.memory import MemoryBackend
from pyramid_examcache.cache.policy import CachePolicy, RequestCache
from pyramid_examcache.transaction import SORT_KEY, bridge_of, open_transaction

Base = declarative_base()


class Row(Base):
    __tablename__ = "row"
    __cache_keys__ = ("row:{id}",)
    id = Column(Integer, primary_key=True)
    text = Column(String, default="")


def warmed(*keys: str) -> CachePolicy:
    policy = CachePolicy(MemoryBackend())
    for key in keys:
        policy.get_or_set(key, lambda: "old")
    return policy


def cached(policy: CachePolicy, key: str) -> bool:
    return policy.backend.get(key) is not None


def explicit_request(policy: CachePolicy):
    request = DummyRequest()
    request.tm = transaction.TransactionManager(explicit=True)
    request.environ["tm.active"] = True
    request.cache = RequestCache(policy, request)
    request.tm.begin()
    return request


def test_one_bridge_per_transaction_sorted_after_zope_sqlalchemy():
    policy = warmed("a", "b")
    request = explicit_request(policy)
    request.cache.invalidate("a")
    request.cache.invalidate("b")
    txn = request.tm.get()
    bridge = bridge_of(txn)
    assert bridge is bridge_of(txn)
    assert SORT_KEY > "~sqlalchemy:140000000000000"
    request.tm.commit()
    assert not cached(policy, "a") and not cached(policy, "b")


def test_a_rolled_back_savepoint_takes_back_the_invalidations_made_after_it():
    policy = warmed("before", "after")
    request = explicit_request(policy)
    request.cache.invalidate("before")  # the bridge joins before the savepoint
    savepoint = request.tm.savepoint()
    request.cache.invalidate("after")
    savepoint.rollback()
    request.tm.commit()
    assert not cached(policy, "before")
    assert cached(policy, "after")


def test_a_savepoint_older_than_the_bridge_rolls_it_back_and_a_new_one_takes_over():
    policy = warmed("rolled back", "kept")
    request = explicit_request(policy)
    savepoint = request.tm.savepoint()
    request.cache.invalidate("rolled back")
    savepoint.rollback()
    request.cache.invalidate("kept")
    assert cached(policy, "kept"), "applied before the commit"
    request.tm.commit()
    assert cached(policy, "rolled back")
    assert not cached(policy, "kept")


def test_a_script_manager_is_never_begun_by_the_cache():
    """``bootstrap()``: ``request.tm`` is the thread's implicit manager and pyramid_tm's
    ``tm.active`` is never set: outside ``with request.tm:`` an invalidation applies at
    once (no transaction is begun that nobody would commit); inside, at its commit."""
    policy = warmed("now", "later", "never")
    request = DummyRequest()
    request.tm = transaction.TransactionManager()
    cache = RequestCache(policy, request)
    cache.invalidate("now")
    assert not cached(policy, "now")
    assert open_transaction(request) is None
    with request.tm:
        cache.invalidate("later")
        assert cached(policy, "later")
    assert not cached(policy, "later")
    try:
        with request.tm:
            cache.invalidate("never")
            raise KeyError("abort")
    except KeyError:
        pass
    assert cached(policy, "never")


def test_an_invalidate_in_an_after_commit_hook_is_applied():
    policy = warmed("k")
    request = explicit_request(policy)
    request.tm.get().addAfterCommitHook(lambda ok: request.cache.invalidate("k"))
    request.tm.commit()
    assert not cached(policy, "k")


def test_a_session_committing_by_itself_applies_its_keys_at_its_commit():
    """A registered session that is not joined to ``request.tm`` (no zope.sqlalchemy)
    commits on its own: its keys are applied after *its* COMMIT, while the request's
    explicit invalidations wait for the request's transaction."""
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    policy = warmed("row:1", "explicit")
    request = explicit_request(policy)
    session = orm.register(sessionmaker(bind=engine)(), request)
    request.cache.invalidate("explicit")
    session.add(Row(id=1))
    session.commit()
    assert not cached(policy, "row:1")
    assert cached(policy, "explicit")
    request.tm.commit()
    assert not cached(policy, "explicit")
    engine.dispose()
