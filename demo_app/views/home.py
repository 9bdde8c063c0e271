"""``GET /``: what this is, the API with example curl lines, where to look next.

HTML for browsers, JSON for ``Accept: application/json`` (the same content). Links to the
admin page and the metrics only when the application configures them
(``examcache.admin_path``, ``examcache.metrics_path``).
"""
from __future__ import annotations

from pyramid.renderers import render_to_response
from pyramid.view import view_config

from ..settings import get_demo_settings

#: (method, path, what it does, example curl arguments after the base URL)
API = (
    ("POST", "/api/auth/register", "create an account; a verification mail is queued",
     """-X POST {base}/api/auth/register -H 'Content-Type: application/json' """
     """-d '{{"email": "ada@example.com", "password": "correct horse battery", "name": "Ada"}}'"""),
    ("GET", "/api/jobs/{jobId}", "the status of a queued mail (state, attempts, next attempt)",
     "{base}/api/jobs/JOB_ID"),
    ("GET", "/api/auth/verify?token=…", "verify the address (the link in the mail)",
     "'{base}/api/auth/verify?token=TOKEN'"),
    ("POST", "/api/auth/resend-verification", "send the verification mail again",
     """-X POST {base}/api/auth/resend-verification -H 'Content-Type: application/json' """
     """-d '{{"email": "ada@example.com"}}'"""),
    ("POST", "/api/auth/login", "a bearer token (the sample teacher: teacher@example.com / "
     "examcache-demo)",
     """-X POST {base}/api/auth/login -H 'Content-Type: application/json' """
     """-d '{{"email": "teacher@example.com", "password": "examcache-demo"}}'"""),
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
    links = []
    if settings.get("examcache.admin_path"):
        links.append({"title": "Admin: mail jobs and cache",
                      "href": request.application_url + settings["examcache.admin_path"]})
    if settings.get("examcache.metrics_path"):
        links.append({"title": "Prometheus metrics",
                      "href": request.application_url + settings["examcache.metrics_path"]})
    if request.registry.get("demo.docs"):
        links.append({"title": "Documentation", "href": request.application_url + "/docs/"})
    return links


def landing(request) -> dict:
    base = get_demo_settings(request).public_url
    return {
        "name": "pyramid_examcache demo: an exam platform",
        "about": ("A Pyramid app using pyramid_examcache: a Redis cache policy (cached views, "
                  "invalidation after the commit) and a transactional mailer (outbox, Huey "
                  "consumer, retries, job status)."),
        "api": [{"method": m, "path": p, "does": d, "curl": "curl -s " + c.format(base=base)}
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


