"""The demo's HTTP API (DESIGN.md section 5).

Ids in paths are canonical positive integers (no sign, no leading zero), so
``/api/exams/01`` can never be cached under a key the ORM does not invalidate.
"""
from __future__ import annotations

ID = r"[1-9][0-9]{0,9}"

#: (route name, pattern, allowed methods) -- other methods answer 405 JSON with ``Allow``
ROUTES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("home", "/", ("GET", "HEAD")),
    ("register", "/api/auth/register", ("POST",)),
    ("verify", "/api/auth/verify", ("GET", "HEAD")),
    ("login", "/api/auth/login", ("POST",)),
    ("resend_verification", "/api/auth/resend-verification", ("POST",)),
    ("exam", "/api/exams/{examId:%s}" % ID, ("GET", "HEAD")),
    ("exam_questions", "/api/exams/{examId:%s}/questions" % ID, ("GET", "HEAD")),
    ("exam_question", "/api/exams/{examId:%s}/questions/{questionId:%s}" % (ID, ID), ("PUT",)),
    ("job", "/api/jobs/{jobId}", ("GET", "HEAD")),
    # the browser's way in (HTML, the login cookie; CSRF-checked forms): views/login.py
    ("login_page", "/login", ("GET", "HEAD", "POST")),
    ("logout", "/logout", ("POST",)),
)


def includeme(config) -> None:
    from .views.errors import method_not_allowed

    for name, pattern, methods in ROUTES:
        config.add_route(name, pattern)
        # fewer predicates than the real views, so Pyramid tries it last
        config.add_view(method_not_allowed(methods), route_name=name)
