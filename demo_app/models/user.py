"""Users: unique email, an argon2 password hash, and a verification token kept hashed."""
from __future__ import annotations

import datetime as dt

from sqlalchemy import Boolean, DateTime, Integer, String, false
from sqlalchemy.orm import Mapped, mapped_column

from .meta import Base


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: stored lower-cased; the unique constraint is the final word on duplicates
    email: Mapped[str] = mapped_column(String(254), unique=True, nullable=False)
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    password_hash: Mapped[str] = mapped_column(String(255), nullable=False)
    verified: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    #: may use the add-on's admin page (the security policy grants ``examcache.admin_permission``)
    is_admin: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False,
                                           server_default=false())
    #: sha256 hex of the token mailed to the user; NULL once used
    verify_token_hash: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    verify_expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True),
                                                                  nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False,
                                                    default=utcnow)

    def to_json(self) -> dict:
        return {"id": self.id, "email": self.email, "name": self.name, "verified": self.verified}
