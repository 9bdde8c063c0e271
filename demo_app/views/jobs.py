"""``GET /api/jobs/{jobId}``: a queued mail's status (M4)."""
from __future__ import annotations

from pyramid.httpexceptions import HTTPNotFound
from pyramid.view import view_config


@view_config(route_name="job", request_method="GET", renderer="json")
def job_status(request):
    job_id = request.matchdict["jobId"]
    status = request.mailer.job_status(job_id) if 0 < len(job_id) <= 64 else None
    if status is None:
        raise HTTPNotFound("no such job")
    return status
