"""G5 in the demo: no response served from the cache to one user ever contains
another user's private data.

``GET /api/exams/{id}`` carries a ``viewer`` block (the caller's id and email)
and is cached per user (``cache_vary=('authenticated_userid',)``);
``GET /api/exams/{id}/questions`` is the same for everybody and declared so
(``cache_public=True``): logged-in requests read and fill its shared entry.
"""
from __future__ import annotations

import itertools

from .helpers import bearer, login, register_verified

TEACHER = "teacher@example.com"
STUDENT = "student@example.com"


def test_cached_responses_never_carry_another_users_data(app, mail):
    callers = {
        "teacher": (bearer(login(app)), TEACHER),
        "student": (bearer(register_verified(app, mail, STUDENT)), STUDENT),
        "anonymous": ({}, None),
    }
    hits: dict[str, int] = {name: 0 for name in callers}
    token = callers["teacher"][0]
    orders = list(itertools.permutations(callers))
    for round_no, order in enumerate(orders * 2):
        exam_id = round_no % 3 + 1
        if round_no % 3 == 0 and round_no:  # every few rounds the owner edits: keys go cold
            app.put_json(f"/api/exams/{exam_id}/questions/{exam_id * 50 - 49}",
                         {"text": f"edit {round_no}"}, headers=token)
        for name in order * 2:
            headers, email = callers[name]
            for url in (f"/api/exams/{exam_id}", f"/api/exams/{exam_id}/questions"):
                res = app.get(url, headers=headers)
                others = {e for _, e in callers.values() if e and e != email}
                for other in others:
                    assert other.encode() not in res.body, (name, url, res.headers["X-Cache"])
                if url.endswith(str(exam_id)):
                    viewer = res.json["viewer"]
                    assert (viewer and viewer["email"]) == email
                    hits[name] += res.headers["X-Cache"] == "HIT"
    assert all(hits.values()), hits  # every caller was served from the cache


def test_an_authenticated_request_fills_the_shared_questions_key_declared_public(app):
    token = bearer(login(app))
    first = app.get("/api/exams/3/questions", headers=token)
    assert first.headers["X-Cache"] == "MISS"
    second = app.get("/api/exams/3/questions", headers=token)
    assert second.headers["X-Cache"] == "HIT" and second.body == first.body
    anonymous = app.get("/api/exams/3/questions")  # the teacher's fill is the shared copy
    assert anonymous.headers["X-Cache"] == "HIT" and anonymous.body == first.body
    assert "Authorization" not in anonymous.headers.get("Vary", "")


def test_per_user_exam_copies_are_invalidated_with_the_exam(app, mail):
    teacher = bearer(login(app))
    student = bearer(register_verified(app, mail, STUDENT))
    for headers in (teacher, student, {}):
        app.get("/api/exams/1", headers=headers)
        assert app.get("/api/exams/1", headers=headers).headers["X-Cache"] == "HIT"
    app.put_json("/api/exams/1/questions/1", {"position": 60}, headers=teacher)
    for headers in (teacher, student, {}):
        assert app.get("/api/exams/1", headers=headers).headers["X-Cache"] == "MISS"
