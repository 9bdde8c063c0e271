"""Every error is JSON with a message; no client input gets a 500."""
from __future__ import annotations

import json

import pytest

from .helpers import bearer, login

POST_ROUTES = ["/api/auth/register", "/api/auth/login"]


@pytest.mark.parametrize("method, url, allow", [
    ("DELETE", "/api/auth/register", "POST"),
    ("GET", "/api/auth/login", "POST"),
    ("POST", "/api/auth/verify", "GET, HEAD"),
    ("POST", "/api/exams/1", "GET, HEAD"),
    ("PUT", "/api/exams/1/questions", "GET, HEAD"),
    ("DELETE", "/api/exams/1/questions/1", "PUT"),
    ("GET", "/api/exams/1/questions/1", "PUT"),
    ("PATCH", "/api/jobs/abc", "GET, HEAD"),
])
def test_wrong_method_is_405_with_allow(app, method, url, allow):
    res = app.request(url, method=method, status=405)
    assert res.content_type == "application/json"
    assert res.headers["Allow"] == allow
    assert res.json["status"] == 405 and method in res.json["message"]


def test_head_of_cached_views(app):
    """HEAD goes through the cache like GET, and what a HEAD stores is the whole body."""
    res = app.head("/api/exams/1/questions", status=200)
    assert res.headers["X-Cache"] == "MISS" and res.content_type == "application/json"
    length = int(res.headers["Content-Length"])
    assert length > 45_000
    assert app.head("/api/exams/1/questions", status=200).headers["X-Cache"] == "HIT"
    hit = app.get("/api/exams/1/questions", status=200)
    assert hit.headers["X-Cache"] == "HIT" and len(hit.body) == length
    assert hit.json["examId"] == 1 and len(hit.json["questions"]) == 50


BAD_BODIES = [
    (b"", "the request body must be a JSON object"),
    (b"   ", "the request body must be a JSON object"),
    (b"{", "malformed JSON"),
    (b"{'email': 'single quotes'}", "malformed JSON"),
    (b"\xff\xfe\x00garbage", "malformed JSON"),
    (b"[1, 2]", "not an array"),
    (b"\"a string\"", "not a string"),
    (b"null", "not null"),
    (b"12", "not a number"),
    (b"[" * 20000 + b"]" * 20000, "malformed JSON"),
    (b'{"email": 1' + b"0" * 5000 + b"}", "malformed JSON"),
]


@pytest.mark.parametrize("body, message", BAD_BODIES)
@pytest.mark.parametrize("url", POST_ROUTES)
def test_malformed_bodies_are_400(app, url, body, message):
    res = app.post(url, body, content_type="application/json", status=400)
    assert res.content_type == "application/json"
    assert message in res.json["message"]


@pytest.mark.parametrize("body, message", BAD_BODIES[:5])
def test_malformed_update_bodies_are_400(app, body, message):
    res = app.put("/api/exams/1/questions/1", body, content_type="application/json",
                  headers=bearer(login(app)), status=400)
    assert message in res.json["message"]


def test_a_form_encoded_body_is_400_not_500(app):
    res = app.post("/api/auth/login", {"email": "a@b.c", "password": "x"}, status=400)
    assert "malformed JSON" in res.json["message"]


def test_oversized_bodies_are_413(app):
    big = json.dumps({"email": "a@example.com", "password": "x" * 70_000, "name": "n"})
    res = app.post("/api/auth/register", big, content_type="application/json", status=413)
    assert res.json == {"status": 413, "message": "request body larger than 65536 bytes"}
    res = app.put("/api/exams/1/questions/1", big, content_type="application/json",
                  headers=bearer(login(app)), status=413)
    assert res.content_type == "application/json"


ODD_VALUES = [None, True, 0, -1, 1.5, 10**30, "", " ", "\x00", "é" * 300, [], [None], {},
              {"$ne": 1}, ["a"] * 20]


@pytest.mark.parametrize("value", ODD_VALUES, ids=repr)
def test_no_500_for_odd_field_values(app, value):
    token = login(app)
    for field in ("email", "password", "name"):
        body = {"email": "fuzz@example.com", "password": "long enough pw", "name": "F",
                field: value}
        res = app.post_json("/api/auth/register", body, expect_errors=True)
        assert res.status_int in (201, 400, 409), res
        assert "message" in res.json or res.status_int == 201
        res = app.post_json("/api/auth/login", {"email": "fuzz@example.com",
                                                "password": "x", field: value},
                            expect_errors=True)
        assert res.status_int in (400, 401, 403) and res.json["message"]
    for field in ("text", "choices", "position"):
        res = app.put_json("/api/exams/1/questions/2", {field: value}, headers=bearer(token),
                           expect_errors=True)
        assert res.status_int in (200, 400), res
        assert res.status_int == 200 or res.json["errors"]


@pytest.mark.parametrize("query", ["token=%ff%fe", "token=%00", "token=a&token=b",
                                   "token=" + "%C3%A9" * 100])
def test_no_500_for_odd_verification_queries(app, query):
    res = app.get("/api/auth/verify?" + query, expect_errors=True)
    assert res.status_int == 400 and res.json["message"]


@pytest.mark.parametrize("path", ["/api/jobs/%00", "/api/jobs/%ff", "/api/exams/%ff",
                                  "/api/exams/1/questions/%C3%A9", "/api/jobs/x%2Fy"])
def test_no_500_for_odd_paths(app, path):
    res = app.get(path, expect_errors=True)
    assert res.status_int in (400, 404) and res.json["message"]


@pytest.mark.parametrize("header", ["Bearer", "Bearer ", "bearer x.y.z", "Token abc",
                                    "Bearer 1.99999999999.abc", "Bearer \u00e9"])
def test_no_500_for_odd_authorization_headers(app, header):
    assert app.get("/api/exams/1", headers={"Authorization": header}).json["viewer"] is None
    res = app.put_json("/api/exams/1/questions/1", {"text": "x"},
                       headers={"Authorization": header}, status=401)
    assert res.json["message"]
