"""The demo's cached views under real HTTP (waitress), real PostgreSQL and Redis,
with logged-in traffic only: the shared questions list (``cache_public=True``)
is filled and served to logged-in readers, the per-user exam view never shows
one user's data to another, and clients revalidate with ``If-None-Match``."""
from __future__ import annotations

import json
import threading

import pytest
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

import demo_app
from demo_app.models import User
from demo_app.security import make_login_token
from pyramid_examcache.cache import get_policy

from ..cache.servers import Client, thread_server
from .conftest import SECRET
from .helpers import bearer

QUESTIONS = "/api/exams/1/questions"


@pytest.fixture
def served(settings):
    config = demo_app.make_config(dict(settings))
    config.include("pyramid_examcache.testing")
    app = config.make_wsgi_app()
    with thread_server(app, threads=16) as base:
        yield app, base
    registry = app.registry
    registry["dbengine"].dispose()
    get_policy(registry).close()
    registry["demo.throttle"].close()


@pytest.fixture
def readers(db) -> dict[str, dict[str, str]]:
    """Five verified users (plus the teacher) and their bearer headers."""
    out = {}
    with Session(db) as session, session.begin():
        teacher = session.scalar(select(User).where(User.email == "teacher@example.com"))
        out["teacher@example.com"] = bearer(make_login_token(SECRET, teacher.id, 3600))
        for i in range(5):
            email = f"reader{i}@example.com"
            uid = session.execute(insert(User).values(
                email=email, name=f"Reader {i}", password_hash="x", verified=True)
                .returning(User.id)).scalar_one()
            out[email] = bearer(make_login_token(SECRET, uid, 3600))
    return out


def request(base, path, headers=None, method="GET", body=None):
    client = Client(base)
    try:
        client.conn.request(method, path, body=body, headers=headers or {})
        resp = client.conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        client.close()


def put_text(base, headers, qid: int, text: str) -> None:
    status, _, body = request(base, f"/api/exams/1/questions/{qid}",
                              {**headers, "Content-Type": "application/json"}, "PUT",
                              json.dumps({"text": text}))
    assert status == 200, body[:300]


def run_threads(fns) -> None:
    errors: list[BaseException] = []

    def wrap(fn):
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 -- re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=(fn,)) for fn in fns]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a client hung"
    assert not errors, errors[:3]


def test_logged_in_readers_only_hit_the_shared_questions_list(served, readers):
    app, base = served
    teacher = readers["teacher@example.com"]
    first = request(base, QUESTIONS, teacher)
    assert first[0] == 200 and first[1]["x-cache"] == "MISS"
    seen: list[tuple[str, bytes]] = []
    lock = threading.Lock()

    def reader(headers):
        client = Client(base)
        mine = []
        try:
            for _ in range(60):
                status, h, body = client.request("GET", QUESTIONS, headers)
                assert status == 200
                mine.append((h.get("X-Cache"), body))
        finally:
            client.close()
            with lock:
                seen.extend(mine)

    run_threads([lambda h=h: reader(h) for h in readers.values()])
    hits = sum(x == "HIT" for x, _ in seen)
    print(f"\n[H1] {len(seen)} logged-in reads after the first: {hits} HITs")
    assert len(seen) == 360 and hits / len(seen) >= 0.99
    assert all(body == first[2] for _, body in seen)
    # a PUT invalidates as before: the next logged-in read is fresh, then hits again
    qid = json.loads(first[2])["questions"][0]["id"]
    put_text(base, teacher, qid, "Edited by the owner?")
    fresh = request(base, QUESTIONS, readers["reader3@example.com"])
    assert fresh[1]["x-cache"] == "MISS" and b"Edited by the owner?" in fresh[2]
    again = request(base, QUESTIONS, readers["reader4@example.com"])
    assert again[1]["x-cache"] == "HIT" and again[2] == fresh[2]


def test_the_per_user_exam_view_never_shows_another_users_data(served, readers):
    app, base = served
    results: list[tuple[str, int, str, dict]] = []
    lock = threading.Lock()

    def reader(email, headers):
        client = Client(base)
        mine = []
        try:
            for i in range(40):
                exam = 1 + i % 2
                status, h, body = client.request("GET", f"/api/exams/{exam}", headers)
                assert status == 200
                mine.append((email, exam, h.get("X-Cache"), json.loads(body), h))
        finally:
            client.close()
            with lock:
                results.extend(mine)

    identities = {e: h for e, h in readers.items() if e != "teacher@example.com"}
    run_threads([lambda e=e, h=h: reader(e, h) for e, h in identities.items()]
                + [lambda: reader(None, {})])
    assert len(results) == 6 * 40
    for email, exam, _, data, headers in results:
        assert data["id"] == exam
        assert (data["viewer"] and data["viewer"]["email"]) == email
        assert "Authorization" in headers.get("Vary", "")
    hits = {e: sum(x == "HIT" for em, _, x, _, _ in results if em == e) for e in
            [*identities, None]}
    assert all(n >= 30 for n in hits.values()), hits  # each identity was served its own copy


def test_revalidation_with_if_none_match(served, readers):
    app, base = served
    teacher = readers["teacher@example.com"]
    first = request(base, QUESTIONS, readers["reader0@example.com"])
    etag = first[1]["etag"]
    status, headers, body = request(base, QUESTIONS, {**readers["reader1@example.com"],
                                                      "If-None-Match": etag})
    assert (status, body, headers["etag"], headers["x-cache"]) == (304, b"", etag, "HIT")
    qid = json.loads(first[2])["questions"][0]["id"]
    put_text(base, teacher, qid, "A new text after the PUT?")
    status, headers, body = request(base, QUESTIONS, {"If-None-Match": etag})
    assert status == 200 and b"A new text after the PUT?" in body
    assert headers["etag"] != etag
    assert request(base, QUESTIONS, {"If-None-Match": headers["etag"]})[0] == 304
