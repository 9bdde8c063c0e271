"""The demo's sample data: ``teacher@example.com`` (verified, an admin: the admin page at
``examcache.admin_path``), owner of exams 1-3, each with 50 questions of ~700 characters
and 4 choices.  The teacher's password is ``demo.sample_password`` (development.ini:
``examcache-demo``, :data:`TEACHER_PASSWORD`) or, unset, a random one that
``examcache-initdb`` prints once.

:func:`load_sample_data` is idempotent: what exists is left alone -- an existing
teacher's password and admin flag included (an operator may have changed them) --
and what is missing is added.  The text is generated from a fixed seed, so every
database gets the same questions.
"""
from __future__ import annotations

import random

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from .models import Exam, Question, User

TEACHER_EMAIL = "teacher@example.com"
#: development.ini's demo.sample_password (published: never on a public site)
TEACHER_PASSWORD = "examcache-demo"
TEACHER_NAME = "Demo Teacher"
EXAMS = {1: "Introduction to Caching", 2: "Transactions and Consistency", 3: "Message Queues"}
QUESTIONS_PER_EXAM = 50
TEXT_LENGTH = 700

_WORDS = (
    "cache key value lease commit abort transaction invalidate stale fresh reader writer "
    "redis database query index row column table session flush version tag expiry ttl "
    "replica primary latency throughput consistency isolation durable atomic queue worker "
    "retry backoff broker message delivery outbox consumer producer idempotent timeout lock "
    "contention stampede warm cold hit miss eviction memory network partition failover"
).split()


def question_text(rng: random.Random, exam_id: int, position: int) -> str:
    head = f"Exam {exam_id}, question {position}: "
    words: list[str] = []
    length = len(head)
    while length < TEXT_LENGTH - 1:
        word = rng.choice(_WORDS)
        words.append(word)
        length += len(word) + 1
    body = " ".join(words)[: TEXT_LENGTH - len(head) - 1].rstrip()
    return head + body[0].upper() + body[1:] + "?"


def question_choices(rng: random.Random) -> list[str]:
    return [" ".join(rng.choice(_WORDS) for _ in range(6)).capitalize() + "." for _ in range(4)]


def load_sample_data(session: Session, password_hash: str) -> dict[str, int]:
    """Add whatever of the sample data is missing; returns what was added.

    ``password_hash`` is the teacher's (argon2) hash, used only if the user is created
    (then an admin); an existing teacher is never changed.  The caller commits.
    """
    added = {"users": 0, "exams": 0, "questions": 0}
    teacher = session.scalar(select(User).where(User.email == TEACHER_EMAIL))
    if teacher is None:
        teacher = User(email=TEACHER_EMAIL, name=TEACHER_NAME, password_hash=password_hash,
                       verified=True, is_admin=True)
        session.add(teacher)
        session.flush()
        added["users"] += 1
    for exam_id, title in EXAMS.items():
        exam = session.get(Exam, exam_id)
        if exam is None:
            exam = Exam(id=exam_id, title=title, owner_id=teacher.id)
            session.add(exam)
            session.flush()
            added["exams"] += 1
        count = session.scalar(
            select(func.count()).select_from(Question).where(Question.exam_id == exam_id))
        if count == 0:
            rng = random.Random(f"examcache-demo-{exam_id}")
            for position in range(1, QUESTIONS_PER_EXAM + 1):
                session.add(Question(exam_id=exam_id, position=position,
                                     text=question_text(rng, exam_id, position),
                                     choices=question_choices(rng)))
            added["questions"] += QUESTIONS_PER_EXAM
    session.flush()
    if session.get_bind().dialect.name == "postgresql":
        # exams were inserted with explicit ids: move the sequence past them
        session.execute(text("SELECT setval(pg_get_serial_sequence('exams', 'id'), "
                             "GREATEST((SELECT max(id) FROM exams), 1))"))
    return added
