"""The peers, one route each, on the demo's own stack and data.

The app is the demo's configuration (:func:`demo_app.make_config`: pyramid_tm,
``request.dbsession``, the bearer-token security policy, the body-limit tween,
the compact JSON renderer) plus these routes, so the only difference between
ours and a peer is the view:

======================================  ==============================================
``GET /seed/exams/{id}/questions``      the seed's cache-aside: ``GET`` -> ``json.loads``
                                        -> the json renderer's ``json.dumps``; ``SETEX``
                                        on a miss (key ``seed:exam:{id}:questions``)
``PUT /seed/exams/{id}/questions/{q}``  update, commit, then ``DEL`` (the seed's order)
``GET /dogpile/exams/{id}/questions``   dogpile.cache region, Redis backend (pickled
                                        values), its default in-process dogpile lock
``GET /dogpile-dlock/exams/{id}/...``   the same with ``distributed_lock=True`` (a Redis lock)
``GET /raw/exams/{id}/questions``       one raw Redis ``GET`` returning the stored body
                                        bytes: the floor of any Redis-backed hit
``GET /fixed``                          fixed bytes (the exam's JSON body, kept in
                                        memory): the framework ceiling
``GET /orm/exams/{id}/questions``       the uncached ORM query (the same as the demo's)
``POST /sync/register``                 the demo's registration, but the mail is sent
                                        synchronously with smtplib inside the request
======================================  ==============================================

``GET /_bench/counters`` (see :mod:`bench.counters`) reports the SQL statements
that read the questions table: the honest count of database loads.
"""
from __future__ import annotations

import datetime as dt
import json
import smtplib
from email.message import EmailMessage
from urllib.parse import urlencode

import redis
from pyramid.httpexceptions import HTTPConflict, HTTPNotFound
from pyramid.renderers import render
from pyramid.response import Response
from sqlalchemy import select

from demo_app import make_config
from demo_app.models import Exam, Question, User
from demo_app.security import hash_password, new_verification_token
from demo_app.settings import get_demo_settings
from demo_app.validation import Fields, json_object
from demo_app.views.auth import utcnow, verification_mail

from .. import counters

TTL = 7200  # the demo caches the questions for 7200 s too
JSON_HEADERS = [("Content-Type", "application/json")]


def load_questions(request, exam_id: int) -> dict:
    """What the demo's view returns (the same queries, the same shape)."""
    exam = request.dbsession.get(Exam, exam_id)
    if exam is None:
        raise HTTPNotFound("no such exam")
    questions = request.dbsession.scalars(
        select(Question).where(Question.exam_id == exam.id)
        .order_by(Question.position, Question.id))
    return {"examId": exam.id, "questions": [q.to_json() for q in questions]}


def _exam_id(request) -> int:
    return int(request.matchdict["examId"])


def _redis(request) -> redis.Redis:
    return request.registry["bench.redis"]


# -- the seed's cache-aside ------------------------------------------------------------

def seed_questions(request):
    exam_id = _exam_id(request)
    key = f"seed:exam:{exam_id}:questions"
    r = _redis(request)
    raw = r.get(key)
    if raw is not None:
        return json.loads(raw)
    data = load_questions(request, exam_id)
    r.setex(key, TTL, json.dumps(data))
    return data


def seed_update(request):
    exam_id = _exam_id(request)
    question = request.dbsession.get(Question, int(request.matchdict["questionId"]))
    if question is None or question.exam_id != exam_id:
        raise HTTPNotFound("no such question in this exam")
    body = json_object(request)
    if "text" in body:
        question.text = body["text"]
    result = question.to_json()
    request.tm.commit()  # the seed: commit, then delete the key
    request.tm.begin()
    _redis(request).delete(f"seed:exam:{exam_id}:questions")
    return result


# -- dogpile.cache ------------------------------------------------------------------------

def make_regions(redis_host: str, redis_port: int, redis_db: int):
    from dogpile.cache import make_region

    regions = {}
    for name, distributed in (("dogpile", False), ("dogpile-dlock", True)):
        regions[name] = make_region(key_mangler=lambda key, p=name: f"{p}:{key}").configure(
            "dogpile.cache.redis", expiration_time=TTL,
            arguments={"host": redis_host, "port": redis_port, "db": redis_db,
                       "redis_expiration_time": TTL + 60, "distributed_lock": distributed,
                       "lock_timeout": 5, "socket_timeout": 5})
    return regions


def dogpile_view(region_name: str):
    def view(request):
        exam_id = _exam_id(request)
        region = request.registry["bench.regions"][region_name]
        return region.get_or_create(f"exam:{exam_id}:questions",
                                    lambda: load_questions(request, exam_id))
    return view


# -- the floor and the ceiling -------------------------------------------------------------

def raw_questions(request):
    exam_id = _exam_id(request)
    key = f"raw:exam:{exam_id}:questions"
    r = _redis(request)
    body = r.get(key)
    if body is None:
        body = render("json", load_questions(request, exam_id), request).encode()
        r.setex(key, TTL, body)
    return Response(body=body, headerlist=list(JSON_HEADERS))


_fixed: dict[str, bytes] = {}


def fixed(request):
    body = _fixed.get("body")
    if body is None:  # the first request (the warm-up) renders the exam once
        body = _fixed["body"] = render("json", load_questions(request, 1), request).encode()
    return Response(body=body, headerlist=list(JSON_HEADERS))


def orm_questions(request):
    return load_questions(request, _exam_id(request))


# -- registration with a synchronous send ----------------------------------------------------

def sync_register(request):
    fields = Fields(json_object(request), allowed=("email", "password", "name"))
    email = fields.email()
    password = fields.string("password", min_length=8, max_length=1024, strip=False)
    name = fields.string("name", max_length=100)
    fields.done("invalid registration")
    session = request.dbsession
    if session.scalar(select(User.id).where(User.email == email)) is not None:
        raise HTTPConflict("an account with this email address already exists")
    settings = get_demo_settings(request)
    token, token_hash = new_verification_token()
    user = User(email=email, name=name, verified=False,
                password_hash=hash_password(request.registry["demo.password_hasher"], password),
                verify_token_hash=token_hash,
                verify_expires_at=utcnow() + dt.timedelta(seconds=settings.verify_ttl))
    session.add(user)
    session.flush()
    link = f"{request.application_url}/api/auth/verify?{urlencode({'token': token})}"
    mail = verification_mail(request, user, link, settings.verify_ttl / 3600)
    message = EmailMessage()
    message["From"] = "no-reply@example.com"
    message["To"] = email
    message["Subject"] = mail["subject"]
    message.set_content(mail["text"])
    message.add_alternative(mail["html"], subtype="html")
    s = request.registry.settings
    with smtplib.SMTP(s["mail.host"], int(s["mail.port"]), timeout=60) as smtp:
        smtp.send_message(message)
    request.response.status_code = 201
    return {"user": user.to_json(), "email": {"sent": True}}


ROUTES = (
    ("seed", "/seed/exams/{examId}/questions", seed_questions, "GET", "json"),
    ("seed_update", "/seed/exams/{examId}/questions/{questionId}", seed_update, "PUT", "json"),
    ("dogpile", "/dogpile/exams/{examId}/questions", dogpile_view("dogpile"), "GET", "json"),
    ("dogpile_dlock", "/dogpile-dlock/exams/{examId}/questions", dogpile_view("dogpile-dlock"),
     "GET", "json"),
    ("raw", "/raw/exams/{examId}/questions", raw_questions, "GET", None),
    ("fixed", "/fixed", fixed, "GET", None),
    ("orm", "/orm/exams/{examId}/questions", orm_questions, "GET", "json"),
    ("sync_register", "/sync/register", sync_register, "POST", "json"),
)


def make_app(settings: dict):
    """The peers' WSGI app (``bench.redis_url`` names the Redis the peers use)."""
    config = make_config(settings)
    url = settings["bench.redis_url"]
    client = redis.Redis.from_url(url)
    config.registry["bench.redis"] = client
    try:
        kw = client.connection_pool.connection_kwargs
        config.registry["bench.regions"] = make_regions(kw["host"], kw["port"], kw.get("db", 0))
    except ImportError:  # dogpile.cache is in the bench extra, not the test extra
        config.registry["bench.regions"] = {}
    for name, pattern, view, method, renderer in ROUTES:
        if name.startswith("dogpile") and not config.registry["bench.regions"]:
            continue
        config.add_route(name, pattern)
        config.add_view(view, route_name=name, request_method=method, renderer=renderer)
    counters.include(config)
    return config.make_wsgi_app()
