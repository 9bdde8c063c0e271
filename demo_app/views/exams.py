"""``/api/exams/*``: exam metadata and questions (cached), question updates.

The two GET views are cached by pyramid_examcache's ``cache=`` view option.
Nothing here invalidates by hand: the PUT changes a :class:`Question` through
the ORM and the model's ``__cache_keys__``/``__cache_tags__`` invalidate
``exam:{examId}:questions``, ``exam:{examId}``, ``question:{questionId}`` (and
the ``exam:{examId}`` tag) once the transaction has committed.
"""
from __future__ import annotations

from pyramid.httpexceptions import HTTPForbidden, HTTPNotFound, HTTPUnauthorized
from pyramid.view import view_config
from sqlalchemy import func, select

from ..models import Exam, Question
from ..security import bearer_token
from ..validation import CHOICES_MAX, CHOICES_MIN, TEXT_MAX, Fields, json_object, path_id


def get_exam(request) -> Exam:
    exam = request.dbsession.get(Exam, path_id(request, "examId"))
    if exam is None:
        raise HTTPNotFound("no such exam")
    return exam


@view_config(route_name="exam", request_method="GET", renderer="json",
             cache="exam:{examId}", cache_ttl=3600, cache_tags=("exam:{examId}",),
             cache_vary=("authenticated_userid",))
def exam_view(request):
    """Exam metadata; ``viewer`` describes the authenticated caller, so the
    cached copy varies by user (each user's copy lives under its own key, the
    user id hashed in the key name, and the response carries ``Vary``)."""
    exam = get_exam(request)
    count = request.dbsession.scalar(
        select(func.count()).select_from(Question).where(Question.exam_id == exam.id))
    user = request.identity
    viewer = None if user is None else {"id": user.id, "email": user.email,
                                        "isOwner": user.id == exam.owner_id}
    return {"id": exam.id, "title": exam.title,
            "owner": {"id": exam.owner.id, "name": exam.owner.name},
            "questionCount": count, "viewer": viewer}


@view_config(route_name="exam_questions", request_method="GET", renderer="json",
             cache="exam:{examId}:questions", cache_ttl=7200, cache_tags=("exam:{examId}",),
             cache_public=True)
def exam_questions(request):
    """The exam's questions ordered by position: the same for every caller, so
    ``cache_public=True`` lets logged-in readers (the platform's usual readers)
    read and fill the shared entry."""
    exam = get_exam(request)
    questions = request.dbsession.scalars(
        select(Question).where(Question.exam_id == exam.id)
        .order_by(Question.position, Question.id))
    return {"examId": exam.id, "questions": [q.to_json() for q in questions]}


@view_config(route_name="exam_question", request_method="PUT", renderer="json")
def update_question(request):
    """Update ``text``, ``choices`` and/or ``position``; only the exam's owner may."""
    user = request.identity
    if user is None:
        message = ("invalid or expired token" if bearer_token(request)
                   else "log in and send Authorization: Bearer <token>")
        raise HTTPUnauthorized(message, headers={"WWW-Authenticate": "Bearer"})
    exam = get_exam(request)
    question = request.dbsession.get(Question, path_id(request, "questionId"))
    if question is None or question.exam_id != exam.id:
        raise HTTPNotFound("no such question in this exam")
    if exam.owner_id != user.id:
        raise HTTPForbidden("only the exam's owner may change its questions")

    fields = Fields(json_object(request), allowed=("text", "choices", "position"))
    text = fields.string("text", required=False, max_length=TEXT_MAX)
    choices = fields.string_list("choices", required=False, min_items=CHOICES_MIN,
                                 max_items=CHOICES_MAX)
    position = fields.integer("position", required=False)
    if not fields.data and not fields.errors:
        fields.errors["text"] = "send at least one of text, choices, position"
    fields.done("invalid question update")

    if text is not None:
        question.text = text
    if choices is not None:
        question.choices = choices
    if position is not None:
        question.position = position
    # no flush() here: zope.sqlalchemy flushes inside the commit, and the
    # invalidations still wait for the database COMMIT (pyramid_examcache.register)
    return question.to_json()
