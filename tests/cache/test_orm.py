"""The ORM path: models declare keys, flushes queue them, commits apply them."""
from __future__ import annotations

import time

import transaction
import zope.sqlalchemy
from pyramid.testing import DummyRequest
from sqlalchemy import Column, ForeignKey, Integer, String, create_engine
from sqlalchemy.orm import declarative_base, sessionmaker

from pyramid_examcache.cache import orm
from pyramid_examcache.cache.backends.memory import MemoryBackend
from pyramid_examcache.cache.policy import CachePolicy, RequestCache
from pyramid_examcache.settings import CacheSettings

from .test_policy import BrokenBackend

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


def request_with_session(policy):
    """A committed question 10 in exam 1, ``question:10`` cached, and a request
    inside an explicit transaction whose session carries the request."""
    factory = make_session()
    seed = factory()
    seed.add_all([Exam(id=1), Question(id=10, exam_id=1)])
    seed.commit()
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
