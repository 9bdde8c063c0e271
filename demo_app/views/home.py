"""``GET /``: what this is, the API with example curl lines, where to look next.

HTML for browsers, JSON for ``Accept: application/json`` (the same content). Links to the
admin page and the metrics only when the application configures them
(``examcache.admin_path``, ``examcache.metrics_path``), and to the metrics only for a client
that may read them (``demo.metrics_allow``). Every link starts with ``demo.public_url``, never
with the request's Host header. The sample teacher's password is shown only when
``demo.sample_password`` sets one (development.ini).
"""
from __future__ import annotations

from pyramid.renderers import render_to_response
from pyramid.view import view_config

from ..access import metrics_allowed
from ..sample import TEACHER_EMAIL
from ..settings import get_demo_settings

#: (method, path, what it does, example curl arguments after the base URL)
API = (
    ("POST", "/api/auth/register", "create an account; a verification mail is queued",
     """-X POST {base}/api/auth/register -H 'Content-Type: application/json' """
     """-d '{{"email": "ada@example.com", "password": "correct horse battery", "name": "Ada"}}'"""),
    ("GET", "/api/jobs/{jobId}", "the status of a queued mail (state, attempts, next attempt): "
     "for its recipient, logged in, or an admin",
     '{base}/api/jobs/JOB_ID -H "Authorization: Bearer $TOKEN"'),
    ("GET", "/api/auth/verify?token=…", "verify the address (the link in the mail)",
     "'{base}/api/auth/verify?token=TOKEN'"),
    ("POST", "/api/auth/resend-verification", "send the verification mail again",
     """-X POST {base}/api/auth/resend-verification -H 'Content-Type: application/json' """
     """-d '{{"email": "ada@example.com"}}'"""),
    ("POST", "/api/auth/login", "a bearer token (the sample teacher: {teacher})",
     """-X POST {base}/api/auth/login -H 'Content-Type: application/json' """
     """-d '{{"email": "{email}", "password": "{password}"}}'"""),
    ("GET", "/api/exams/{examId}", "an exam (cached per user; see X-Cache)",
     "-i {base}/api/exams/1"),
    ("GET", "/api/exams/{examId}/questions", "its questions (cached for everybody; ETag, 304)",
     "-i {base}/api/exams/1/questions"),
    ("PUT", "/api/exams/{examId}/questions/{questionId}",
     "edit a question (the owner): the cache is invalidated after the commit",
     """-X PUT {base}/api/exams/1/questions/1 -H "Authorization: Bearer $TOKEN" """
     """-H 'Content-Type: application/json' -d '{{"text": "Edited"}}'"""),
)


def _links(request) -> list[dict[str, str]]:
    settings = request.registry.settings
    base = get_demo_settings(request).public_url
    links = []
    if settings.get("examcache.admin_path"):
        links.append({"title": "Admin: mail jobs and cache",
                      "href": base + settings["examcache.admin_path"]})
    if settings.get("examcache.metrics_path") and metrics_allowed(request):
        links.append({"title": "Prometheus metrics",
                      "href": base + settings["examcache.metrics_path"]})
    if request.registry.get("demo.docs"):
        links.append({"title": "Documentation", "href": base + "/docs/"})
    return links


def _teacher(request) -> dict[str, str]:
    """How the API table names the sample teacher's password."""
    password = get_demo_settings(request).sample_password
    if password is not None:
        return {"teacher": f"{TEACHER_EMAIL} / {password}", "email": TEACHER_EMAIL,
                "password": password}
    return {"teacher": f"{TEACHER_EMAIL}, with the password examcache-initdb printed",
            "email": TEACHER_EMAIL, "password": "THE PASSWORD"}


def landing(request) -> dict:
    base = get_demo_settings(request).public_url
    teacher = _teacher(request)
    return {
        "name": "pyramid_examcache demo: an exam platform",
        "about": ("A Pyramid app using pyramid_examcache: a Redis cache policy (cached views, "
                  "invalidation after the commit) and a transactional mailer (outbox, Huey "
                  "consumer, retries, job status)."),
        "api": [{"method": m, "path": p, "does": d.format(**teacher),
                 "curl": "curl -s " + c.format(base=base, **teacher)}
                for m, p, d, c in API],
        "links": _links(request),
    }


@view_config(route_name="home", request_method=("GET", "HEAD"))
def home(request):
    offers = request.accept.acceptable_offers(["text/html", "application/json"])
    kind = offers[0][0] if offers else "text/html"
    renderer = "json" if kind == "application/json" else "demo_app:templates/home.jinja2"
    response = render_to_response(renderer, landing(request), request=request)
    response.vary = ("Accept",)
    return response


