"""Exams and questions: cached reads, owner-only updates, invalidation on commit only."""
from __future__ import annotations

import pytest
from sqlalchemy import select, text

from demo_app.models import Question

from .helpers import bearer, login, register_verified
from .hooks import FailAfterView

QUESTIONS = "/api/exams/1/questions"


def question_text(db, question_id: int) -> str:
    with db.connect() as conn:
        return conn.scalar(select(Question.text).where(Question.id == question_id))


def test_questions_body_order_and_size(app):
    res = app.get(QUESTIONS, status=200)
    assert res.content_type == "application/json"
    body = res.json
    assert body["examId"] == 1
    questions = body["questions"]
    assert len(questions) == 50
    assert [q["position"] for q in questions] == list(range(1, 51))
    assert set(questions[0]) == {"id", "position", "text", "choices"}
    assert all(len(q["choices"]) == 4 for q in questions)
    assert all(680 <= len(q["text"]) <= 700 for q in questions)
    assert 45_000 <= len(res.body) <= 52_000


def test_exam_metadata(app):
    body = app.get("/api/exams/2").json
    assert body == {"id": 2, "title": "Transactions and Consistency",
                    "owner": {"id": 1, "name": "Demo Teacher"}, "questionCount": 50,
                    "viewer": None}
    mine = app.get("/api/exams/2", headers=bearer(login(app))).json
    assert mine["viewer"] == {"id": 1, "email": "teacher@example.com", "isOwner": True}


@pytest.mark.parametrize("url", ["/api/exams/99", "/api/exams/99/questions",
                                 "/api/exams/9999999999", "/api/exams/9999999999/questions",
                                 "/api/exams/99999999999", "/api/exams/abc", "/api/exams/01",
                                 "/api/exams/-1/questions", "/api/exams/1/questions/x",
                                 "/api/nothing", "/api/exams/1/"])
def test_unknown_ids_are_404_json(app, url):
    res = app.get(url, status=404)
    assert res.content_type == "application/json"
    assert res.json["status"] == 404 and res.json["message"]


def test_unknown_ids_are_not_cached(app, db):
    """A 404 is never stored: once the exam exists, the same URLs answer 200 at once.

    The exam is inserted with plain SQL, so nothing invalidates its keys: a cached
    404 would still be served."""
    for _ in range(2):
        app.get("/api/exams/99", status=404)
        app.get("/api/exams/99/questions", status=404)
    with db.begin() as conn:
        conn.execute(text("INSERT INTO exams (id, title, owner_id) VALUES (99, 'Late exam', 1)"))
        conn.execute(text("INSERT INTO questions (id, exam_id, position, text, choices) VALUES "
                          "(9999, 99, 1, 'Is it there?', '[\"yes\", \"no\"]')"))
    exam = app.get("/api/exams/99", status=200)
    assert exam.headers["X-Cache"] == "MISS" and exam.json["title"] == "Late exam"
    questions = app.get("/api/exams/99/questions", status=200)
    assert questions.headers["X-Cache"] == "MISS"
    assert questions.json == {"examId": 99, "questions": [
        {"id": 9999, "position": 1, "text": "Is it there?", "choices": ["yes", "no"]}]}


def test_miss_hit_update_miss_with_fresh_data(app, db):
    first = app.get(QUESTIONS)
    assert first.headers["X-Cache"] == "MISS"
    second = app.get(QUESTIONS)
    assert second.headers["X-Cache"] == "HIT"
    assert second.body == first.body  # served as the stored bytes
    exam = app.get("/api/exams/1")
    assert app.get("/api/exams/1").headers["X-Cache"] == "HIT"

    token = login(app)
    new = {"text": "Which guarantee does commit-time invalidation give?",
           "choices": ["None", "G1", "G2", "G3"], "position": 7}
    res = app.put_json("/api/exams/1/questions/1", new, headers=bearer(token), status=200)
    assert res.json == {"id": 1, **new}
    assert question_text(db, 1) == new["text"]

    fresh = app.get(QUESTIONS)
    assert fresh.headers["X-Cache"] == "MISS"
    moved = [q for q in fresh.json["questions"] if q["id"] == 1]
    assert moved == [{"id": 1, **new}]
    assert [q["position"] for q in fresh.json["questions"]] == sorted(
        q["position"] for q in fresh.json["questions"])
    assert app.get(QUESTIONS).headers["X-Cache"] == "HIT"
    assert app.get(QUESTIONS).json == fresh.json

    # the exam metadata key was invalidated as well
    assert app.get("/api/exams/1").headers["X-Cache"] == "MISS"
    assert app.get("/api/exams/1").json == exam.json
    # other exams keep their cache
    app.get("/api/exams/2/questions")
    app.put_json("/api/exams/1/questions/2", {"text": "again"}, headers=bearer(token))
    assert app.get("/api/exams/2/questions").headers["X-Cache"] == "HIT"


def test_a_partial_update_changes_only_what_is_sent(app):
    token = login(app)
    before = app.get(QUESTIONS).json["questions"][2]
    res = app.put_json(f"/api/exams/1/questions/{before['id']}", {"choices": ["yes", " no "]},
                       headers=bearer(token)).json
    assert res == {**before, "choices": ["yes", "no"]}


@pytest.mark.parametrize("mode, status", [("after-view", None), ("commit", 500)])
def test_an_update_whose_transaction_fails_leaves_the_cache_correct(app, db, mode, status):
    old = app.get(QUESTIONS).json
    assert app.get(QUESTIONS).headers["X-Cache"] == "HIT"
    app.get("/api/exams/1")
    token = login(app)
    body = {"text": "This text is written, then the transaction fails."}
    headers = {**bearer(token), "X-Test-Fail": mode}
    if status is None:
        with pytest.raises(FailAfterView, match="on purpose"):
            app.put_json("/api/exams/1/questions/1", body, headers=headers)
    else:
        res = app.put_json("/api/exams/1/questions/1", body, headers=headers, status=status)
        assert res.json == {"status": 500, "message": "internal server error"}

    assert question_text(db, 1) == old["questions"][0]["text"]  # rolled back
    cached = app.get(QUESTIONS)
    assert cached.headers["X-Cache"] == "HIT"  # nothing was invalidated
    assert cached.json == old  # and what is cached is still the truth
    assert app.get("/api/exams/1").headers["X-Cache"] == "HIT"

    # a later update that commits does invalidate
    app.put_json("/api/exams/1/questions/1", body, headers=bearer(token), status=200)
    fresh = app.get(QUESTIONS)
    assert fresh.headers["X-Cache"] == "MISS"
    assert fresh.json["questions"][0]["text"] == body["text"]


def test_update_requires_the_owner(app, mail, db):
    url = "/api/exams/1/questions/1"
    body = {"text": "Changed by someone."}
    res = app.put_json(url, body, status=401)
    assert res.headers["WWW-Authenticate"] == "Bearer"
    assert "Authorization" in res.json["message"]
    app.put_json(url, body, headers={"Authorization": "Basic dGVhY2hlcjp4"}, status=401)

    other = register_verified(app, mail, "student@example.com")
    res = app.put_json(url, body, headers=bearer(other), status=403)
    assert res.json["message"] == "only the exam's owner may change its questions"
    original = question_text(db, 1)
    assert original != body["text"]
    # 401 comes before 404: nothing is revealed to anonymous callers
    app.put_json("/api/exams/99/questions/1", body, status=401)


def test_update_unknown_ids(app):
    token = login(app)
    body = {"text": "x"}
    app.put_json("/api/exams/99/questions/1", body, headers=bearer(token), status=404)
    app.put_json("/api/exams/1/questions/9999", body, headers=bearer(token), status=404)
    res = app.put_json("/api/exams/1/questions/51", body, headers=bearer(token), status=404)
    assert res.json["message"] == "no such question in this exam"  # question 51 is in exam 2
    app.put_json("/api/exams/1/questions/99999999999", body, headers=bearer(token), status=404)


@pytest.mark.parametrize("body, field", [
    ({"text": ""}, "text"),
    ({"text": "   "}, "text"),
    ({"text": 5}, "text"),
    ({"text": None}, "text"),
    ({"text": "x" * 10_001}, "text"),
    ({"choices": ["only one"]}, "choices"),
    ({"choices": [str(i) for i in range(11)]}, "choices"),
    ({"choices": ["a", ""]}, "choices"),
    ({"choices": ["a", 2]}, "choices"),
    ({"choices": "a, b"}, "choices"),
    ({"choices": {"a": 1}}, "choices"),
    ({"position": 0}, "position"),
    ({"position": -3}, "position"),
    ({"position": "1"}, "position"),
    ({"position": 1.5}, "position"),
    ({"position": True}, "position"),
    ({"position": 2**40}, "position"),
    ({"id": 5, "text": "ok"}, "id"),
    ({}, "text"),
])
def test_update_field_errors(app, db, body, field):
    token = login(app)
    before = question_text(db, 1)
    res = app.put_json("/api/exams/1/questions/1", body, headers=bearer(token), status=400)
    assert res.json["message"] == "invalid question update"
    assert field in res.json["errors"]
    assert question_text(db, 1) == before
