"""Small helpers shared by the demo tests (API calls as a client makes them)."""
from __future__ import annotations

from urllib.parse import urlsplit

from demo_app.sample import TEACHER_EMAIL, TEACHER_PASSWORD


def login(app, email: str = TEACHER_EMAIL, password: str = TEACHER_PASSWORD) -> str:
    return app.post_json("/api/auth/login", {"email": email, "password": password}).json["token"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def verification_link(mail) -> str:
    """The path + query of the verification link in a captured mail (text part)."""
    for word in (mail.text or "").split():
        if "/api/auth/verify?token=" in word:
            parts = urlsplit(word)
            return f"{parts.path}?{parts.query}"
    raise AssertionError(f"no verification link in {mail.text!r}")


def register_verified(app, mail, email: str, password: str = "correct horse battery",
                      name: str = "Student") -> str:
    """Register, follow the mailed link, log in; returns the token."""
    app.post_json("/api/auth/register", {"email": email, "password": password, "name": name},
                  status=201)
    app.get(verification_link(mail.last), status=200)
    return login(app, email, password)
