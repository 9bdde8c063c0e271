"""Exams and their questions.

Both declare the cache keys their rows feed, so a flushed insert, update or
delete invalidates them after the commit (pyramid_examcache's ORM hook):

* ``exam:{id}`` -- ``GET /api/exams/{examId}`` (its ``questionCount`` depends on
  the questions too, hence the key on :class:`Question`);
* ``exam:{id}:questions`` -- ``GET /api/exams/{examId}/questions``;
* ``question:{id}`` -- one question (for applications that cache it alone);
* the tag ``exam:{id}`` -- everything cached about one exam, including the
  per-user variants of the exam view.
"""
from __future__ import annotations

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .meta import Base
from .user import User

JSONType = JSON().with_variant(JSONB(), "postgresql")


class Exam(Base):
    __tablename__ = "exams"
    __cache_keys__ = ("exam:{id}", "exam:{id}:questions")
    __cache_tags__ = ("exam:{id}",)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    title: Mapped[str] = mapped_column(String(200), nullable=False)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"), nullable=False, index=True)

    owner: Mapped[User] = relationship()


class Question(Base):
    __tablename__ = "questions"
    __table_args__ = (Index("ix_questions_exam_id_position", "exam_id", "position"),)
    __cache_keys__ = ("exam:{exam_id}:questions", "question:{id}", "exam:{exam_id}")
    __cache_tags__ = ("exam:{exam_id}",)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    exam_id: Mapped[int] = mapped_column(ForeignKey("exams.id", ondelete="CASCADE"),
                                         nullable=False)
    position: Mapped[int] = mapped_column(Integer, nullable=False)
    text: Mapped[str] = mapped_column(Text, nullable=False)
    choices: Mapped[list] = mapped_column(JSONType, nullable=False)

    def to_json(self) -> dict:
        return {"id": self.id, "position": self.position, "text": self.text,
                "choices": list(self.choices)}
