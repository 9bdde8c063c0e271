"""The ORM path: models declare keys, flushes queue them, commits apply them."""
from __future__ import annotations

import time

import pytest
import transaction
import zope.sqlalchemy
from pyramid.testing import DummyRequest
from sqlalchemy import Column, ForeignKey, Integer, String, create_engine
from sqlalchemy.orm import declarative_base, sessionmaker

from pyramid_examcache.cache import orm
from pyramid_examcache.cache.backends.memory import MemoryBackend
from pyramid_examcache.cache.policy import CachePolicy, RequestCache
from pyramid_examcache.settings import CacheSettings

from .test_policy import BrokenBackend, FailingVote

Base = declarative_base()


class Exam(Base):
    __tablename__ = "exam"
    __cache_keys__ = ("exam:{id}",)
    id = Column(Integer, primary_key=True)
    title = Column(String, default="")


class Question(Base):
    __tablename__ = "question"
    __cache_keys__ = ("exam:{exam_id}:questions", "question:{id}")
    __cache_tags__ = ("exam:{exam_id}",)
    id = Column(Integer, primary_key=True)
    exam_id = Column(Integer, ForeignKey("exam.id"))
    text = Column(String, default="")


class Plain(Base):
    __tablename__ = "plain"
    id = Column(Integer, primary_key=True)


def make_session():
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    return sessionmaker(bind=engine)


def warm(policy, *keys):
    for key in keys:
        policy.get_or_set(key, lambda: "cached")


def cached(policy, key):
    return policy.backend.get(key) is not None


def test_keys_for_uses_old_and_new_values():
    factory = make_session()
    session = factory()
    session.add_all([Exam(id=1), Exam(id=2), Question(id=10, exam_id=1)])
    session.commit()
    q = session.get(Question, 10)
    q.exam_id = 2
    keys, tags = orm.keys_for(q)
    assert keys == {"exam:1:questions", "exam:2:questions", "question:10"}
    assert tags == {"exam:1", "exam:2"}
    assert orm.keys_for(Plain(id=1)) == (set(), set())


def test_a_script_session_invalidates_on_commit_only():
    policy = CachePolicy(MemoryBackend())
    session = orm.register(make_session()(), policy)
    session.add_all([Exam(id=1), Question(id=10, exam_id=1)])
    session.commit()
    warm(policy, "exam:1:questions", "question:10", "exam:1")
    q = session.get(Question, 10)
    q.text = "changed"
    session.flush()
    assert cached(policy, "question:10")  # flushed, not committed: nothing yet
    session.rollback()
    assert cached(policy, "question:10")  # rolled back: nothing at all
    q = session.get(Question, 10)
    q.text = "changed"
    session.commit()
    assert not cached(policy, "question:10")
    assert not cached(policy, "exam:1:questions")
    assert cached(policy, "exam:1")  # not declared by Question


def test_tag_declared_by_a_model_invalidates_values_filled_under_it():
    policy = CachePolicy(MemoryBackend())
    session = orm.register(make_session()(), policy)
    session.add_all([Exam(id=1), Question(id=10, exam_id=1)])
    session.commit()
    policy.get_or_set("exam:1:summary", lambda: "s", tags=["exam:1"])
    session.delete(session.get(Question, 10))
    session.commit()
    assert not cached(policy, "exam:1:summary")


def request_with_session(policy, seed=True):
    """A committed question 10 in exam 1, ``question:10`` cached, and a request
    inside an explicit transaction whose session is registered with it."""
    factory = make_session()
    if seed:
        first = factory()
        first.add_all([Exam(id=1), Question(id=10, exam_id=1)])
        first.commit()
    warm(policy, "question:10")
    request = DummyRequest()
    request.tm = transaction.TransactionManager(explicit=True)
    request.environ["tm.active"] = True
    request.cache = RequestCache(policy, request)
    request.tm.begin()
    session = factory()
    zope.sqlalchemy.register(session, transaction_manager=request.tm)
    orm.register(session, request)
    return request, session


def test_request_bound_session_defers_to_the_request_transaction_and_marks_it_dirty():
    policy = CachePolicy(MemoryBackend())
    request, session = request_with_session(policy)
    session.get(Question, 10).text = "new"
    session.flush()
    assert request.cache.is_dirty()
    assert request.cache.get_or_set("question:10", lambda: "own write") == "own write"
    assert cached(policy, "question:10")
    request.tm.commit()
    assert not cached(policy, "question:10")


def test_request_bound_session_abort_invalidates_nothing():
    policy = CachePolicy(MemoryBackend())
    request, session = request_with_session(policy)
    session.get(Question, 10).text = "new"
    session.flush()
    request.tm.abort()
    assert cached(policy, "question:10")


def test_deferred_invalidations_are_retried_in_the_background():
    backend = BrokenBackend()
    policy = CachePolicy(backend, CacheSettings(breaker_threshold=1, breaker_reset=0.2))
    policy.get_or_set("k", lambda: "old")
    backend.down = True
    policy.invalidate_now(["k"])
    backend.down = False
    deadline = time.monotonic() + 3
    while backend.get("k") is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert backend.get("k") is None, "no read happened, yet the invalidation must land"
    policy.close()


def test_a_session_that_was_not_registered_is_left_alone():
    policy = CachePolicy(MemoryBackend())
    session = make_session()()
    session.add_all([Exam(id=1), Question(id=10, exam_id=1)])
    session.commit()
    warm(policy, "question:10")
    session.get(Question, 10).text = "changed"
    session.commit()
    assert cached(policy, "question:10")


def test_deleting_an_expired_object_invalidates_its_keys():
    policy = CachePolicy(MemoryBackend())
    session = orm.register(make_session()(), policy)
    session.add_all([Exam(id=1), Question(id=10, exam_id=1)])
    session.commit()  # expires every attribute
    warm(policy, "question:10", "exam:1:questions")
    question = session.get(Question, 10)
    session.expire(question)
    session.delete(question)
    session.commit()
    assert not cached(policy, "question:10")
    assert not cached(policy, "exam:1:questions")


def test_savepoints_rolled_back_drop_only_their_own_keys():
    policy = CachePolicy(MemoryBackend())
    session = orm.register(make_session()(), policy)
    session.add_all([Exam(id=1), Exam(id=2), Exam(id=3)])
    session.commit()
    warm(policy, "exam:1", "exam:2", "exam:3")
    session.get(Exam, 1).title = "outer"
    session.flush()
    with session.begin_nested():
        session.get(Exam, 2).title = "released savepoint"
    nested = session.begin_nested()
    session.get(Exam, 3).title = "rolled back"
    session.flush()
    nested.rollback()
    session.commit()
    assert not cached(policy, "exam:1")
    assert not cached(policy, "exam:2")
    assert cached(policy, "exam:3")


def test_a_rolled_back_script_transaction_invalidates_nothing():
    policy = CachePolicy(MemoryBackend())
    session = orm.register(make_session()(), policy)
    session.add(Exam(id=1))
    session.commit()
    warm(policy, "exam:1")
    session.get(Exam, 1).title = "x"
    session.flush()
    session.rollback()
    session.commit()  # nothing left to apply
    assert cached(policy, "exam:1")


def test_an_invalidate_called_during_the_commit_waits_for_its_outcome():
    """pyramid_tm removes tm.active before commit(): code running inside the
    commit (a before-commit hook, zope.sqlalchemy's flush) must still defer."""
    policy = CachePolicy(MemoryBackend())
    request, session = request_with_session(policy)
    txn = request.tm.get()
    txn.addBeforeCommitHook(lambda: request.cache.invalidate("question:10"))
    txn.join(FailingVote())
    del request.environ["tm.active"]  # as pyramid_tm does before commit()
    with pytest.raises(RuntimeError, match="vote failed"):
        request.tm.commit()
    request.tm.abort()
    assert cached(policy, "question:10"), "invalidated although the commit failed"

    request, session = request_with_session(policy, seed=False)
    request.tm.get().addBeforeCommitHook(lambda: request.cache.invalidate("question:10"))
    del request.environ["tm.active"]
    request.tm.commit()
    assert not cached(policy, "question:10")


def test_a_zope_flush_inside_the_commit_invalidates_after_the_database_commit():
    """The cookiecutter view: no flush in the view; zope.sqlalchemy flushes in
    tpc_begin; a resource voting before it sees the cache still untouched."""
    policy = CachePolicy(MemoryBackend())
    request, session = request_with_session(policy)
    session.get(Question, 10).text = "new"
    seen = []

    class Observer:
        transaction_manager = None

        def abort(self, txn): pass
        def tpc_begin(self, txn): pass
        def commit(self, txn): pass
        def tpc_vote(self, txn): seen.append(cached(policy, "question:10"))
        def tpc_finish(self, txn): pass
        def tpc_abort(self, txn): pass
        def sortKey(self): return "0-observer"

    request.tm.get().join(Observer())
    del request.environ["tm.active"]
    request.tm.commit()
    assert seen == [True], "invalidated before the database COMMIT"
    assert not cached(policy, "question:10")


def test_register_refuses_what_it_cannot_use():
    with pytest.raises(TypeError, match="CachePolicy"):
        orm.register(make_session()(), object())


def test_the_durable_row_is_written_in_the_same_transaction(tmp_path):
    from sqlalchemy import func, select

    from pyramid_examcache.cache.invalidation_log import InvalidationLog, log_table
    from pyramid_examcache.cache.invalidation_log import metadata as log_metadata

    engine = create_engine(f"sqlite:///{tmp_path}/db.sqlite")
    Base.metadata.create_all(engine)
    log_metadata.create_all(engine)
    policy = CachePolicy(MemoryBackend())
    # no relay thread: this test runs the rounds itself
    policy.journal = InvalidationLog(policy.invalidate_now, policy.usable, relay_after=0, thread=False)
    try:
        session = orm.register(sessionmaker(bind=engine)(), policy)
        session.add(Exam(id=1))
        session.commit()

        def rows():
            with engine.connect() as conn:
                return conn.execute(select(func.count()).select_from(log_table)).scalar()

        assert rows() == 1  # applied by the writer, deleted by the next relay round
        policy.journal.run_once()
        assert rows() == 0
        session.get(Exam, 1).title = "rolled back"
        session.flush()
        session.rollback()
        assert rows() == 0
        assert policy.journal.stats["recorded"] == 1
    finally:
        policy.close()
        engine.dispose()


def test_bulk_and_text_dml_mark_the_transaction_dirty_and_selects_do_not():
    from sqlalchemy import text, update

    policy = CachePolicy(MemoryBackend())
    request, session = request_with_session(policy)
    session.execute(text("SELECT count(*) FROM question"))
    assert not request.cache.is_dirty()
    session.execute(text("  update question SET text = 'x'"))
    assert request.cache.is_dirty()
    assert request.cache.get_or_set("question:10", lambda: "own write") == "own write"
    request.tm.abort()

    request, session = request_with_session(policy, seed=False)
    session.execute(update(Question).values(text="bulk"))
    assert request.cache.is_dirty()
    request.tm.abort()
