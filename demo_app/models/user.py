"""Users: unique email, an argon2 password hash, a verification token kept hashed, and
the generation of their login tokens (a token carries it; bumping it revokes them all)."""
from __future__ import annotations

import datetime as dt

from sqlalchemy import Boolean, DateTime, Integer, String, false
from sqlalchemy.orm import Mapped, mapped_column

from pyramid_examcache.clock import utcnow

from .meta import Base


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
    #: login tokens carry it and must match: +1 at logout and at a password change
    token_generation: Mapped[int] = mapped_column(Integer, nullable=False, default=0,
                                                  server_default="0")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False,
                                                    default=utcnow)

    def set_password(self, password_hash: str) -> None:
        """A new password: every login token issued so far stops working."""
        self.password_hash = password_hash
        self.revoke_logins()

    def revoke_logins(self) -> None:
        """Every login token issued so far stops working (logout, password change)."""
        self.token_generation = (self.token_generation or 0) + 1

    def to_json(self) -> dict:
        return {"id": self.id, "email": self.email, "name": self.name, "verified": self.verified}
